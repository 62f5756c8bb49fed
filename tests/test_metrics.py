"""OpenTelemetry metrics, read back with the SDK's in-memory metric reader.

Every test ends by walking every recorded data point: attribute keys come from
a small closed set, and no value is a session id, a turn id, text or a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from inspect import signature
from typing import Any

import pytest
from conftest import FAST, eventually, forever
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis_server import drop_namespace, redis_url_fixture  # noqa: F401 (the redis_url fixture)

from qoder_async import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    QoderClient,
    RequestInProgressError,
    TurnFailedError,
)
from qoder_async._core.turns import LiveText
from qoder_async._turn.metrics import NO_METRICS, retry_reason
from qoder_async._turn.session import Turn
from qoder_async.fleet import Delivery, Fleet, RedisCoordinator
from qoder_async.testing import FakeQoderServer, TurnContext

TURN = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "qoder"}
# Every attribute key a data point may carry, and what its values may be.
ALLOWED: dict[str, set[Any]] = {
    "gen_ai.operation.name": {"invoke_agent"},
    "gen_ai.provider.name": {"qoder"},
    "gen_ai.token.type": {"input", "output"},
    "error.type": {"TurnFailedError", "NotFoundError", "StreamStalledError", "CancelledError"},
    "qoder.retry.reason": {
        "connection_error",
        "timeout",
        "408",
        "429",
        "5xx",
        "in_progress",
        "other",
    },
    "qoder.fleet.redelivered": {True, False},
}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
async def metered(server: FakeQoderServer, provider: MeterProvider) -> AsyncIterator[QoderClient]:
    async with QoderClient(
        token=server.token, base_url=server.base_url, meter_provider=provider, reconnect=FAST
    ) as client:
        yield client


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point recorded so far, by instrument name."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "qoder_async"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(reader: InMemoryMetricReader, name: str, **attributes: Any) -> float:
    """A counter's value (or a histogram's count) over the points with these attributes."""
    n = 0.0
    for point in points(reader).get(name, []):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            n += point.count if hasattr(point, "count") else point.value
    return n


def assert_private(reader: InMemoryMetricReader, *secrets: str) -> None:
    """No data point carries an unknown attribute, a session id, a turn id, text or a token."""
    everything = points(reader)
    assert everything
    for name, found in everything.items():
        for point in found:
            for key, value in point.attributes.items():
                assert key in ALLOWED, f"{name} has attribute {key}"
                assert value in ALLOWED[key], f"{name} has {key}={value!r}"
                assert all(s not in str(value) for s in secrets if s)


async def test_a_turn_records_its_duration_tokens_and_chunks(
    server: FakeQoderServer,
    metered: QoderClient,
    reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def two_messages(ctx: TurnContext) -> None:
        await ctx.sleep(0.1)  # previews are live only: most reach the connection
        await ctx.message("The first part, in a few previews.", delay=0.01)
        await ctx.message("The second part.")
        ctx.emit(
            "span.model_request_end",
            is_error=False,
            model_usage={"input_tokens": 12, "output_tokens": 34},
        )

    server.script = two_messages
    sid = server.add_session()["id"]
    delivered: list[Any] = []  # what reached the turn, previews included (it keeps none)
    deliver = Turn._deliver

    def recording(turn: Turn, ev: Any) -> None:
        delivered.append(ev)
        deliver(turn, ev)

    monkeypatch.setattr(Turn, "_deliver", recording)
    turn = await metered.session(sid).send("hello there")
    result = await turn.result()
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 34)
    # The text chunks the turn saw: every event that changed its text.
    live = LiveText()
    chunks = sum(live.feed(ev) for ev in delivered)
    assert chunks >= 2
    found = points(reader)
    (duration,) = found["gen_ai.client.operation.duration"]
    assert dict(duration.attributes) == TURN
    assert duration.count == 1
    assert duration.sum > 0
    if "explicit_bucket_boundaries_advisory" in signature(Meter.create_histogram).parameters:
        assert 655.36 in duration.explicit_bounds  # agent turns run for minutes
    usage = {p.attributes["gen_ai.token.type"]: p for p in found["gen_ai.client.token.usage"]}
    assert usage["input"].sum == result.usage.input_tokens
    assert usage["output"].sum == result.usage.output_tokens
    assert dict(usage["input"].attributes) == {**TURN, "gen_ai.token.type": "input"}
    (first,) = found["gen_ai.client.operation.time_to_first_chunk"]
    assert first.count == 1
    assert 0 <= first.sum <= duration.sum
    (per_chunk,) = found["gen_ai.client.operation.time_per_output_chunk"]
    assert per_chunk.count == chunks - 1
    assert first.sum + per_chunk.sum <= duration.sum + 1e-9  # all within the turn
    assert "qoder.http.retries" not in found
    assert_private(reader, sid, str(turn.turn_id), server.token, "hello there", result.text)


async def test_failed_turns_and_sends_carry_the_error_type(
    server: FakeQoderServer, metered: QoderClient, reader: InMemoryMetricReader
) -> None:
    sid = server.add_session()["id"]
    server.script = forever
    doomed = await metered.session(sid).send("again")
    await metered.session(sid).wait_connected()
    await metered.sessions.delete(sid)
    with pytest.raises(TurnFailedError):
        await doomed.result()
    with pytest.raises(NotFoundError):
        await metered.session("sess_missing").send("anyone?")
    duration = "gen_ai.client.operation.duration"
    assert total(reader, duration, **{"error.type": "TurnFailedError"}) == 1
    assert total(reader, duration, **{"error.type": "NotFoundError"}) == 1
    assert total(reader, duration) == 2
    assert "gen_ai.client.token.usage" not in points(reader)  # failed turns have no result
    assert_private(reader, sid, "sess_missing", server.token, str(doomed.turn_id))


async def test_reconnects_and_stalls_are_counted(
    server: FakeQoderServer, metered: QoderClient, reader: InMemoryMetricReader
) -> None:
    sid = server.add_session()["id"]
    server.faults.drop_after_events = 2
    await (await metered.session(sid).send("hello")).result()
    reconnects = total(reader, "qoder.stream.reconnects")
    assert reconnects >= 1
    assert total(reader, "qoder.stream.stalls") == 0
    server.faults.drop_after_events = None

    stalled = server.add_session()["id"]
    server.faults.stall_probability = 1.0  # every connection stops sending events
    session = metered.session(stalled, stall_timeout=0.3, max_stalls=100)
    turn = await session.send("are you there?")
    await eventually(lambda: total(reader, "qoder.stream.stalls") >= 1, "a stall")
    server.faults.stall_probability = 0.0
    async with asyncio.timeout(20):
        await turn.result()
    assert total(reader, "qoder.stream.reconnects") > reconnects
    assert_private(reader, sid, stalled, server.token)


async def test_retries_are_counted_by_reason(
    server: FakeQoderServer, metered: QoderClient, reader: InMemoryMetricReader
) -> None:
    sid = server.add_session()["id"]
    server.faults.retry_after = 0.0
    server.faults.throttle_first, server.faults.throttle_status = 2, 429
    await metered.sessions.retrieve(sid)
    server.faults.throttle_first, server.faults.throttle_status = 1, 503
    await metered.sessions.retrieve(sid)
    assert total(reader, "qoder.http.retries", **{"qoder.retry.reason": "429"}) == 2
    assert total(reader, "qoder.http.retries", **{"qoder.retry.reason": "5xx"}) == 1
    assert total(reader, "qoder.http.retries") == 3
    meta = server.add_file(b"report", "report.txt")
    server.faults.throttle_first, server.faults.throttle_status = 1, 429
    async with await metered.files.download(meta["id"]) as download:  # a streamed answer
        assert await download.read() == b"report"
    assert total(reader, "qoder.http.retries", **{"qoder.retry.reason": "429"}) == 3
    assert_private(reader, sid, server.token, meta["id"])


def test_retry_reasons_are_a_closed_set() -> None:
    refused = APIConnectionError("refused", method="GET", url="/x")
    timeout = APITimeoutError(method="GET", url="/x")
    busy = RequestInProgressError("still running", status_code=409)
    assert retry_reason(refused, None) == "connection_error"
    assert retry_reason(timeout, None) == "timeout"
    assert retry_reason(busy, 409) == "in_progress"
    assert retry_reason(refused, 408) == "408"
    assert retry_reason(refused, 429) == "429"
    assert retry_reason(refused, 502) == "5xx"
    assert retry_reason(refused, 599) == "5xx"
    assert retry_reason(refused, 409) == "other"


async def test_a_detached_listener_is_counted(
    server: FakeQoderServer, metered: QoderClient, reader: InMemoryMetricReader
) -> None:
    async def chatty(ctx: TurnContext) -> None:
        for i in range(20):
            ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])
            await ctx.sleep(0)

    server.script = chatty
    sid = server.add_session()["id"]
    session = metered.session(sid, queue_size=2, listener_timeout=0.3)
    stuck = session.listen()
    first = asyncio.ensure_future(stuck.__anext__())  # reads one event, then never again
    async with asyncio.timeout(20):
        await session.wait_connected()
        await (await session.send("talk")).result()
        await first
    assert session.listener_overflows == 1
    assert total(reader, "qoder.listener.overflows") == 1
    await stuck.aclose()
    assert_private(reader, sid, server.token)


async def slow_turn(ctx: TurnContext) -> None:
    for i in range(6):
        await ctx.sleep(0.01)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])


async def test_the_fleet_counts_deliveries_hand_offs_and_leases(
    server: FakeQoderServer,
    metered: QoderClient,
    reader: InMemoryMetricReader,
    redis_url: str,
) -> None:
    """Worker a stops in the middle of a turn: it hands the lease off, b redelivers."""
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    namespace = f"metrics-{uuid.uuid4().hex[:12]}"
    made: list[RedisCoordinator] = []

    def coordinator() -> RedisCoordinator:
        made.append(RedisCoordinator.from_url(redis_url, namespace=namespace))
        return made[-1]

    got: list[Delivery] = []
    stuck = asyncio.Event()

    async def block(d: Delivery) -> None:
        got.append(d)
        if len(got) == 2:
            stuck.set()
            await asyncio.Event().wait()

    async def record(d: Delivery) -> None:
        got.append(d)

    try:
        fleet_a = Fleet(metered, coordinator(), worker_id="a", lease_ttl=60.0)
        fleet_a.handler(block)
        task = asyncio.create_task(fleet_a.serve())
        try:
            await fleet_a.send(sid, "go")
            async with asyncio.timeout(20):
                await stuck.wait()
            assert total(reader, "qoder.fleet.leases") == 1  # held now
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert total(reader, "qoder.fleet.leases") == 0
        assert total(reader, "qoder.fleet.handoffs") == 1
        fleet_b = Fleet(metered, coordinator(), worker_id="b", lease_ttl=2.0)
        fleet_b.handler(record)
        task = asyncio.create_task(fleet_b.serve())
        try:
            await eventually(lambda: got[-1].event.type == "session.status_idle", "the turn")
            # released once the turn ended
            await eventually(lambda: total(reader, "qoder.fleet.leases") == 0, "released")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        for c in made:
            await c.aclose()
        await drop_namespace(redis_url, namespace)
    redelivered = sum(d.redelivered for d in got)
    assert redelivered == 1
    deliveries = "qoder.fleet.deliveries"
    assert total(reader, deliveries, **{"qoder.fleet.redelivered": True}) == redelivered
    assert total(reader, deliveries) == len(got) == fleet_a.delivered + fleet_b.delivered
    assert total(reader, "qoder.fleet.leases") == 0
    assert_private(reader, sid, server.token)


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def test_nothing_happens_without_opentelemetry() -> None:
    """No OTel installed: no import, no metrics, turns carry no timing, the client works."""
    code = """
        import sys
        sys.modules["opentelemetry"] = None
        from qoder_async import QoderClient
        from qoder_async._turn import metrics as _metrics
        assert not _metrics.HAVE_OTEL
        client = QoderClient(token="t")
        assert client._metrics is _metrics.NO_METRICS
        assert client._tracing.turn("sess_x").chunks is None
        print("ok")
    """
    assert _run(code) == "ok"


def test_the_global_provider_is_used_once_the_application_sets_it() -> None:
    """Until the application sets a global provider turns are not timed (no cost);
    instruments made before it still report to it once it is set."""
    code = """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from qoder_async import APIConnectionError, QoderClient

        client = QoderClient(token="t")
        assert client._tracing.turn("sess_x").chunks is None
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert client._tracing.turn("sess_x").chunks == []
        client._http.observer.retrying(APIConnectionError("x", method="GET", url="/"), None)
        names = [
            m.name
            for r in reader.get_metrics_data().resource_metrics
            for s in r.scope_metrics
            for m in s.metrics
        ]
        print(sorted(names))
    """
    assert _run(code) == "['qoder.http.retries']"


def test_an_explicit_no_op_provider_costs_nothing() -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    client = QoderClient(token="t", meter_provider=NoOpMeterProvider())
    assert client._metrics is NO_METRICS
    assert client._http.observer is NO_METRICS
    assert client.with_options(timeout=5.0)._metrics is NO_METRICS
