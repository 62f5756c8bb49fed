"""The resilient event stream against the fake server and its fault switches."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FAST, eventually, forever

from qoder_async import (
    AuthenticationError,
    Backoff,
    BadRequestError,
    Cursor,
    CursorStoreError,
    MemoryCursorStore,
    NotFoundError,
    QoderClient,
    RateLimitError,
    ReconnectPolicy,
    ResumeExhaustedError,
    StreamContentTypeError,
    StreamDecodeError,
    StreamStalledError,
    UserMessage,
)
from qoder_async._core.models import Event
from qoder_async.testing import CannedResponse, FakeQoderServer, TurnContext
from qoder_async.types import Accepted, AgentMessage, PreviewDelta, PreviewStart, SessionStatusIdle

pytestmark = pytest.mark.both_transports  # every test here reads a stream


async def _until_idle(stream: object, n_idle: int = 1) -> list[Event]:
    out: list[Event] = []
    seen = 0
    async for ev in stream:  # type: ignore[attr-defined]
        out.append(ev)
        if isinstance(ev, SessionStatusIdle) and ev.stop_reason.ends_turn:
            seen += 1
            if seen == n_idle:
                break
    return out


def _stored_ids(server: FakeQoderServer, session_id: str, after: str | None = None) -> list[str]:
    ids = [e["id"] for e in server.stored_events(session_id)]
    return ids[ids.index(after) + 1 :] if after else ids


async def test_stream_from_the_created_event(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    acc = await client.sessions.events.send(session_id, UserMessage("hi"))
    async with client.sessions.events.stream(session_id, last_event_id=acc.last_event_id) as st:
        events = await _until_idle(st)
        assert st.last_event_id == events[-1].id
    assert [e.id for e in events] == _stored_ids(server, session_id, acc.last_event_id)
    assert all(e.turn_id == acc.turn_id for e in events)
    (req,) = [r for r in server.requests if r.path.endswith("/stream")]
    assert req.headers["last-event-id"] == acc.last_event_id
    assert req.headers["accept"] == "text/event-stream"


async def test_without_cursor_the_history_is_replayed(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await (await client.session(session_id).send("first")).result()
    async with client.sessions.events.stream(session_id) as st:
        events = await _until_idle(st)
    assert [e.id for e in events] == _stored_ids(server, session_id)


async def test_previews_share_ids_and_are_not_deduplicated(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.2)  # the stream connects before the message starts
        await ctx.message("one two three four five six", chunks=3, delay=0.01)

    server.script = slow
    acc = await client.sessions.events.send(session_id, UserMessage("hi"))
    async with client.sessions.events.stream(
        session_id, last_event_id=acc.last_event_id, event_deltas=["agent.message"]
    ) as st:
        events = await _until_idle(st)
    starts = [e for e in events if isinstance(e, PreviewStart)]
    deltas = [e for e in events if isinstance(e, PreviewDelta)]
    final = [e for e in events if isinstance(e, AgentMessage)]
    assert len(starts) == 1
    assert len(deltas) == 3
    assert "".join(d.text for d in deltas) == final[0].text
    assert {e.id for e in [*starts, *deltas, *final]} == {final[0].id}
    assert st.last_event_id == events[-1].id


@pytest.mark.parametrize("fault", ["drop_after_bytes", "drop_probability"])
async def test_reconnects_and_resumes_without_loss_or_duplicates(
    client: QoderClient, server: FakeQoderServer, session_id: str, fault: str
) -> None:
    handle = client.session(session_id)
    for i in range(3):
        await (await handle.send(f"turn {i}")).result()
    if fault == "drop_after_bytes":
        server.faults.drop_after_bytes = 3000
    else:
        server.faults.drop_probability = 0.3
    server.faults.duplicate_on_resume = 2
    async with client.sessions.events.stream(session_id, reconnect=FAST) as st:
        events = await _until_idle(st, n_idle=3)
        assert st.reconnects > 0
    assert [e.id for e in events] == _stored_ids(server, session_id)
    assert server.fault_counts[fault] > 0
    assert server.fault_counts["duplicate_on_resume"] > 0
    assert st.duplicates > 0


async def test_clean_end_after_idle_reconnects_for_the_next_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.close_after_idle = True
    got: list[Event] = []

    async def follow() -> None:
        async with client.sessions.events.stream(session_id, reconnect=FAST) as st:
            got.extend(await _until_idle(st, n_idle=2))
            assert st.reconnects >= 1

    reader = asyncio.create_task(follow())
    await eventually(lambda: server.open_streams > 0, "the stream is open")
    for text in ("one", "two"):
        await client.sessions.events.send(session_id, UserMessage(text))
        await server.wait_idle(session_id)
    await reader
    assert [e.id for e in got] == _stored_ids(server, session_id)


async def test_stall_reconnects_then_gives_up_with_timings(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = forever
    acc = await client.sessions.events.send(session_id, UserMessage("hi"))
    async with client.sessions.events.stream(
        session_id,
        last_event_id=acc.last_event_id,
        stall_timeout=0.3,
        max_stalls=2,
        reconnect=FAST,
    ) as st:
        with pytest.raises(StreamStalledError) as info:
            async for _ in st:
                pass
    err = info.value
    assert err.stalls == 2
    assert err.stall_timeout == 0.3
    assert err.idle_seconds >= 0.3
    assert err.heartbeats >= 1  # the socket was alive: heartbeats kept coming
    assert err.last_event_id is not None
    assert server.stream_connections == 2
    await client.sessions.cancel(session_id)


async def test_heartbeat_only_stall_recovers(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    handle = client.session(session_id)
    await (await handle.send("warm up")).result()
    server.faults.stall_probability = 0.5
    async with client.sessions.events.stream(
        session_id, stall_timeout=0.3, max_stalls=50, reconnect=FAST
    ) as st:
        st.expect_activity = True  # a history replay: the watchdog must watch it too
        events = await _until_idle(st)
    server.faults.stall_probability = 0
    assert [e.id for e in events] == _stored_ids(server, session_id)
    assert st.stalls > 0


async def test_a_stall_is_caught_when_each_event_is_read_by_its_own_task(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    # The watchdog cancels the task reading *now*: with every anext() in a task of
    # its own and a cursor saved between events, a stale task (done, so cancel() does
    # nothing) would leave a stalled connection unnoticed until the timeout below.
    handle = client.session(session_id)
    await (await handle.send("warm up")).result()
    server.faults.stall_probability = 0.5
    store = MemoryCursorStore()
    events: list[Event] = []
    async with client.sessions.events.stream(
        session_id, stall_timeout=0.3, max_stalls=50, reconnect=FAST, cursor_store=store
    ) as st:
        st.expect_activity = True
        async with asyncio.timeout(30):
            while not events or not isinstance(events[-1], SessionStatusIdle):
                events.append(await asyncio.create_task(st.__anext__()))
    server.faults.stall_probability = 0
    assert [e.id for e in events] == _stored_ids(server, session_id)
    assert server.fault_counts["stall_probability"] > 0
    assert store.cursors[session_id].event_id == events[-1].id


async def test_idle_session_silence_is_not_a_stall(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.heartbeat_interval = 60
    async with client.sessions.events.stream(session_id, stall_timeout=0.1, max_stalls=1) as st:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async for _ in st:
                    pass
        assert st.stalls == 0


@pytest.mark.parametrize(
    ("status", "error"), [(400, BadRequestError), (401, AuthenticationError), (404, NotFoundError)]
)
async def test_fatal_statuses_raise_at_once(
    client: QoderClient, server: FakeQoderServer, session_id: str, status: int, error: type
) -> None:
    body = b'{"type":"error","error":{"type":"x_error","message":"nope"}}'
    server.faults.respond_next = [
        CannedResponse(
            "GET",
            "/stream$",
            status,
            {"Content-Type": "application/json", "x-request-id": "r1"},
            body,
        )
    ]
    async with client.sessions.events.stream(session_id, reconnect=FAST) as st:
        with pytest.raises(error) as info:
            await st.__anext__()
    assert info.value.status_code == status
    assert info.value.request_id == "r1"
    assert "nope" in str(info.value)
    assert st.connections == 0


async def test_unknown_session_is_fatal(client: QoderClient) -> None:
    async with client.sessions.events.stream("sess_missing") as st:
        with pytest.raises(NotFoundError):
            await st.__anext__()


async def test_non_sse_answer_is_fatal_with_the_body(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    html = b"<html><body>" + b"Gateway says no. " * 2000 + b"</body></html>"
    server.faults.respond_next = [
        CannedResponse("GET", "/stream$", 200, {"Content-Type": "text/html"}, html)
    ]
    async with client.sessions.events.stream(session_id) as st:
        with pytest.raises(StreamContentTypeError) as info:
            await st.__anext__()
    assert info.value.content_type == "text/html"
    assert "Gateway says no" in info.value.body
    assert len(str(info.value)) < 600


async def test_throttled_stream_retries_with_retry_after(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await (await client.session(session_id).send("x")).result()
    server.faults.throttle_first = 2
    server.faults.throttle_status = 503
    server.faults.retry_after = 0.05
    async with client.sessions.events.stream(session_id, reconnect=FAST) as st:
        events = await _until_idle(st)
        assert st.reconnects == 2
    assert [e.id for e in events] == _stored_ids(server, session_id)


async def test_gives_up_after_the_reconnect_bound(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.throttle_first = 100
    server.faults.retry_after = 0.01
    policy = ReconnectPolicy(backoff=Backoff(initial=0.01, maximum=0.01), max_attempts=3)
    async with client.sessions.events.stream(session_id, reconnect=policy) as st:
        with pytest.raises(ResumeExhaustedError) as info:
            await st.__anext__()
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, RateLimitError)
    assert "429" in str(info.value.__cause__)
    server.faults.throttle_first = 0


async def test_bad_frame_keeps_earlier_events_and_the_cursor(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await (await client.session(session_id).send("x")).result()
    server.faults.inject_frames = [b"id: evt_bad\nevent: agent.message\ndata: {broken\n\n"]
    got: list[Event] = []
    async with client.sessions.events.stream(session_id) as st:
        with pytest.raises(StreamDecodeError) as info:
            async for ev in st:
                got.append(ev)
        assert st.last_event_id == got[-1].id
    assert [e.id for e in got] == _stored_ids(server, session_id)
    assert info.value.last_event_id == got[-1].id
    assert info.value.event_id == "evt_bad"


async def test_cursor_store_lets_a_new_process_resume(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    store = MemoryCursorStore()
    handle = client.session(session_id)
    await (await handle.send("one")).result()
    async with client.sessions.events.stream(session_id, cursor_store=store) as st:
        first = await _until_idle(st)
    assert store.cursors[session_id] == Cursor(first[-1].id or "", first[-1].processed_at)
    await (await handle.send("two")).result()
    async with client.sessions.events.stream(session_id, cursor_store=store) as st:
        second = await _until_idle(st)
    assert [e.id for e in first + second] == _stored_ids(server, session_id)


async def test_breaking_out_closes_the_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await (await client.session(session_id).send("x")).result()
    async with client.sessions.events.stream(session_id) as st:
        async for _ in st:
            break
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


async def test_cancelling_the_reader_closes_the_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def read() -> None:
        async with client.sessions.events.stream(session_id) as st:
            async for _ in st:
                pass

    task = asyncio.create_task(read())
    await eventually(lambda: server.open_streams > 0, "the stream is open")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


async def test_read_timeout_is_independent_of_json_timeouts(
    server: FakeQoderServer, session_id: str
) -> None:
    server.heartbeat_interval = 0.5
    async with QoderClient(token=server.token, base_url=server.base_url, timeout=0.2) as c:
        async with c.sessions.events.stream(session_id, read_timeout=5.0) as st:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.2):
                    async for _ in st:
                        pass
            assert st.reconnects == 0  # 0.5 s heartbeats never hit the 5 s read timeout
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


async def test_read_timeout_reconnects_a_silent_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.heartbeat_interval = 60  # no bytes at all on an idle session
    async with client.sessions.events.stream(session_id, read_timeout=0.2, reconnect=FAST) as st:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                async for _ in st:
                    pass
        assert st.reconnects >= 1
        assert st.stalls == 0  # silence on an idle session is not a stall


async def test_a_failing_cursor_store_surfaces_and_loses_nothing(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """A store error is not a network error; no event is skipped."""

    class Flaky(MemoryCursorStore):
        def __init__(self) -> None:
            super().__init__()
            self.saves = 0

        async def save(self, session_id: str, cursor: Cursor) -> None:
            self.saves += 1
            if self.saves == 3:
                raise ConnectionError("the cursor database went away")
            await super().save(session_id, cursor)

    await (await client.session(session_id).send("one")).result()
    store = Flaky()
    got: list[str] = []
    async with client.sessions.events.stream(session_id, cursor_store=store) as st:
        with pytest.raises(CursorStoreError) as info:
            async for ev in st:
                got.append(ev.id or "")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.last_event_id == got[-1]
    assert st.reconnects == 0  # not mistaken for a network error
    async with client.sessions.events.stream(session_id, last_event_id=st.cursor) as rest:
        got += [e.id or "" for e in await _until_idle(rest)]
    assert got == _stored_ids(server, session_id)


async def test_breaking_out_without_async_with_closes_the_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """No socket leaks per abandoned stream."""
    await (await client.session(session_id).send("x")).result()
    for _ in range(20):
        async for _ in client.sessions.events.stream(session_id):
            break
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")
    assert server.stream_connections >= 20


async def test_a_server_that_ignores_the_cursor_repeats_nothing(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """A turn of over 1,000 events, a drop after more events than
    the dedupe window holds, and a server that then replays the whole history: every
    event once, nothing from before the cursor."""

    async def long_turn(ctx: TurnContext) -> None:
        for i in range(1200):
            ctx.emit("agent.thinking", thinking=f"step {i}")
            if i % 100 == 0:
                await ctx.sleep(0)
        await ctx.message("done")

    server.script = long_turn
    first = await client.sessions.events.send(session_id, UserMessage("warm up"))
    await server.wait_idle(session_id)
    acc = await client.sessions.events.send(session_id, UserMessage("go"))
    await server.wait_idle(session_id)
    server.faults.ignore_last_event_id = True
    server.faults.drop_after_events = 1100  # more than the 1,024 ids the window keeps

    async with client.sessions.events.stream(
        session_id, last_event_id=_cursor(acc), reconnect=FAST
    ) as st:

        async def heal() -> None:
            await eventually(lambda: st.reconnects > 0, "a reconnect", timeout=60)
            server.faults.drop_after_events = None

        healer = asyncio.create_task(heal())
        events = await _until_idle(st)
        await healer
    assert [e.id for e in events] == _stored_ids(server, session_id, acc.last_event_id)
    assert len(events) > 1200
    assert first.last_event_id not in {e.id for e in events}
    assert st.duplicates > 1100
    assert server.fault_counts["ignore_last_event_id"] >= 2


def _cursor(acc: Accepted) -> Cursor:
    ev = acc.events[0]
    return Cursor(ev.id or "", ev.processed_at)
