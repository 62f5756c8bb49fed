"""OpenTelemetry spans for turns and tools, read back with the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from conftest import FAST, eventually, forever
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qoder_async import ConfigurationError, QoderClient, TurnFailedError
from qoder_async.testing import FakeQoderServer, tool_script


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_a_turn_is_an_invoke_agent_span_with_its_tools(
    server: FakeQoderServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    server.script = tool_script("lookup", {"q": "x"})
    server.dialect.turn_ids = True  # the span names the turn id when the server sends one
    sid = server.add_session()["id"]

    async def lookup(args: Mapping[str, Any]) -> str:
        return "42"

    async with QoderClient(
        token=server.token, base_url=server.base_url, tracer_provider=provider
    ) as client:
        turn = await client.session(sid).send("go", tools={"lookup": lookup})
        await turn.result()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    agent, tool = spans["invoke_agent"], spans["execute_tool lookup"]
    assert agent.kind is trace.SpanKind.CLIENT
    assert agent.attributes is not None
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.provider.name"] == "qoder"
    assert agent.attributes["gen_ai.conversation.id"] == sid
    assert agent.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert agent.attributes["qoder.turn.id"] == turn.turn_id
    assert agent.status.is_ok
    assert tool.parent is not None
    assert tool.parent.span_id == agent.context.span_id
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.name"] == "lookup"
    assert tool.attributes["gen_ai.tool.call.id"] == turn.snapshot().tool_calls[0].id


async def test_usage_reconnects_and_failures_are_recorded(
    server: FakeQoderServer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    sid = server.add_session()["id"]
    server.faults.drop_after_events = 2
    async with QoderClient(
        token=server.token, base_url=server.base_url, tracer_provider=provider, reconnect=FAST
    ) as client:
        turn = await client.session(sid).send("hello")
        result = await turn.result()
        server.faults.drop_after_events = None
        server.script = forever
        doomed = await client.session(sid).send("again")
        await client.session(sid).wait_connected()
        await client.sessions.delete(sid)
        with pytest.raises(TurnFailedError):
            await doomed.result()
    first, second = [s for s in exporter.get_finished_spans() if s.name == "invoke_agent"]
    assert first.attributes is not None
    assert first.attributes["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert first.attributes["gen_ai.usage.output_tokens"] == result.usage.output_tokens
    reconnects = [e for e in first.events if e.name == "qoder.stream.reconnect"]
    assert reconnects
    assert all(e.attributes and e.attributes["qoder.cursor"] for e in reconnects)
    assert not second.status.is_ok
    assert second.attributes is not None
    assert second.attributes["error.type"] == "TurnFailedError"


def test_nothing_happens_without_opentelemetry() -> None:
    """No OTel installed: no import, no spans, the client works."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None
        import qoder_async
        from qoder_async._turn import tracing as _tracing
        assert not _tracing.HAVE_OTEL
        assert _tracing.tracer_for(None).turn("sess_x") is _tracing.NO_SPAN
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"


def test_no_global_provider_is_installed(provider: TracerProvider) -> None:
    before = trace.get_tracer_provider()
    QoderClient(token="t", tracer_provider=provider)
    QoderClient(token="t")
    assert trace.get_tracer_provider() is before


async def test_a_turn_nobody_records_is_not_folded_again_at_its_end(
    server: FakeQoderServer, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTel installed but the turn sampled out (or no provider set up): no span
    attributes are wanted, so the end of a turn does not fold all its events again."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from qoder_async._turn.session import Turn

    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    sampled_out.add_span_processor(SimpleSpanProcessor(exporter))
    folds = 0
    snapshot = Turn.snapshot

    def counting(self: Turn) -> Any:
        nonlocal folds
        folds += 1
        return snapshot(self)

    monkeypatch.setattr(Turn, "snapshot", counting)
    sid = server.add_session()["id"]
    for provider, expected_folds in ((sampled_out, 0), (None, 0)):
        folds = 0
        async with QoderClient(
            token=server.token, base_url=server.base_url, tracer_provider=provider
        ) as client:
            turn = await client.session(sid).send("hello")
            async for _ in turn:
                pass
        assert turn.done
        assert folds == expected_folds
    assert exporter.get_finished_spans() == ()


async def test_a_refused_follow_leaves_no_span_open(server: FakeQoderServer) -> None:
    """follow() on a handle whose connection is open is refused: the refusal starts no
    span that never ends (every span started is ended)."""
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

    class Counter(SpanProcessor):
        def __init__(self) -> None:
            self.open: set[int] = set()

        def on_start(self, span: Span, parent_context: object = None) -> None:
            self.open.add(id(span))

        def on_end(self, span: ReadableSpan) -> None:
            self.open.discard(id(span))

    counter = Counter()
    provider = TracerProvider()
    provider.add_span_processor(counter)
    sid = server.add_session()["id"]
    async with QoderClient(
        token=server.token, base_url=server.base_url, tracer_provider=provider
    ) as client:
        handle = client.session(sid)
        handle.on("*", lambda event: None)
        await eventually(lambda: handle.connected, "the session's connection is open")
        with pytest.raises(ConfigurationError, match="follow"):
            await handle.follow()
        assert counter.open == set()
        await handle.aclose()
