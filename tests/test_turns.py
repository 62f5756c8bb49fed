"""The turn API: send -> Turn, routing by turn, shared connections, tools, faults."""

from __future__ import annotations

import asyncio
import contextlib
import pydoc
import random
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import FAST, eventually, forever, held_message, turn_record
from fake_dialects import OldWire

from qoder_async import (
    ClientClosedError,
    ConfigurationError,
    QoderClient,
    SessionBusyError,
    TurnFailedError,
    UserMessage,
)
from qoder_async._core.models import Event
from qoder_async.testing import Dialect, FakeQoderServer, TurnContext, tool_script
from qoder_async.types import (
    AgentCustomToolUse,
    AgentMessage,
    EndTurn,
    RequiresAction,
    SessionStatusIdle,
    UnknownStopReason,
)


@pytest.mark.parametrize("turn_ids", [False, True], ids=["production-wire", "turn-ids"])
async def test_turn_yields_exactly_its_events(
    client: QoderClient, server: FakeQoderServer, session_id: str, turn_ids: bool
) -> None:
    server.dialect.turn_ids = turn_ids
    session = client.session(session_id)
    assert client.session(session_id) is session
    turn = await session.send("Help me analyze this code.")
    assert (turn.turn_id is not None) == turn_ids
    assert turn.accepted.events[0].id == turn.accepted.last_event_id
    events = [ev async for ev in turn]
    # the stream starts after our own user.message, so the echo is not repeated
    record = turn_record(server, session_id, turn.accepted.last_event_id or "")
    assert [e.id for e in events] == record
    assert isinstance(events[-1], SessionStatusIdle)
    result = await turn.result()
    assert "Help me analyze this code." in result.text
    assert result.stop_reason is not None
    assert result.stop_reason.type == "end_turn"
    assert result.usage.input_tokens
    assert [c.name for c in result.tool_calls] == ["Read"]
    assert result.tool_calls[0].output
    assert turn.done


async def test_text_stream_with_previews_and_coalescing(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    reply = "The quick brown fox jumps over the lazy dog. " * 4

    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.2)
        await ctx.message(reply, chunks=8, delay=0.02)

    server.script = slow
    session = client.session(session_id)
    turn = await session.send("go")
    chunks = [c async for c in turn.text_stream()]
    assert len(chunks) >= 4
    assert "".join(chunks) == reply

    turn = await session.send("again")
    updates = [u async for u in turn.text_stream(coalesce=0.05)]
    assert updates[-1] == reply
    assert all(reply.startswith(u) for u in updates)
    assert len(updates) < 8  # coalesced


async def test_previews_cut_by_a_reconnect_are_dropped(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    reply = "alpha beta gamma delta epsilon zeta eta theta"

    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.2)
        await ctx.message(reply, chunks=8, delay=0.03)

    server.script = slow
    server.faults.drop_probability = 0.2
    client.reconnect_policy = FAST
    session = client.session(session_id)
    turn = await session.send("go")
    updates = [u async for u in turn.text_stream(coalesce=0.0)]
    server.faults.drop_probability = 0
    assert updates[-1] == reply
    assert (await turn.result()).text == reply


async def test_busy_session_policies(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.3)
        await ctx.message(f"done: {ctx.text}")

    server.script = slow
    session = client.session(session_id)
    first = await session.send("first")
    with pytest.raises(SessionBusyError):
        await session.send("second")
    second = await session.send("second", on_busy="wait")
    assert first.done
    assert (await first.result()).text == "done: first"
    third = await session.send("third", on_busy="interrupt")
    assert (await second.result()).stop_reason is not None
    assert (await third.result()).text == "done: third"
    types = [e["type"] for e in server.stored_events(session_id)]
    assert "user.interrupt" in types
    assert len(server.user_messages(session_id)) == 3


async def test_interrupt_ends_the_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = forever
    turn = await client.session(session_id).send("go")
    await server.wait_for_event(session_id, "session.status_running")
    await turn.interrupt()
    result = await turn.result()
    assert result.ended
    assert any(e.type == "user.interrupt" for e in result.events)


async def test_define_outcome_starts_a_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    turn = await client.session(session_id).define_outcome("A README exists", max_iterations=2)
    result = await turn.result()
    types = [e.type for e in result.events]
    assert "span.outcome_evaluation_start" in types
    assert "span.outcome_evaluation_end" in types


async def test_session_deleted_fails_the_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = forever
    turn = await client.session(session_id).send("go")
    await client.session(session_id).wait_connected()
    await client.sessions.delete(session_id)
    with pytest.raises(TurnFailedError) as info:
        await turn.result()
    assert info.value.reason == "session.deleted"
    assert info.value.result is not None


# ----------------------------------------------------------------------------- tools


async def test_tool_runner_runs_each_tool_once_across_a_drop(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    calls: list[Mapping[str, Any]] = []

    async def lookup(args: Mapping[str, Any]) -> str:
        calls.append(args)
        return f"weather in {args['city']}: sunny"

    async def script(ctx: TurnContext) -> None:
        use = await ctx.custom_tool("lookup", {"city": "Paris"})
        # cut every connection right after the tool use, before requires_action
        server.faults.drop_after_events = 0
        await ctx.sleep(0.15)
        server.faults.drop_after_events = None
        results = await ctx.require_action([use["id"]])
        await ctx.message(f"tool said: {results[0]['content'][0]['text']}")

    server.script = script
    client.reconnect_policy = FAST
    turn = await client.session(session_id).send("weather?", tools={"lookup": lookup})
    result = await turn.result()
    assert calls == [{"city": "Paris"}]
    assert result.text == "tool said: weather in Paris: sunny"
    (call,) = result.tool_calls
    assert isinstance(call.use, AgentCustomToolUse)
    assert call.output == "weather in Paris: sunny"
    results = [
        e for e in server.stored_events(session_id) if e["type"] == "user.custom_tool_result"
    ]
    assert len(results) == 1


async def test_manual_tool_results(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {"expr": "6*7"})
    turn = await client.session(session_id).send("compute")
    async for ev in turn:
        if isinstance(ev, SessionStatusIdle) and isinstance(ev.stop_reason, RequiresAction):
            (pending,) = turn.pending_tool_calls
            assert pending.name == "calc"
            assert pending.input == {"expr": "6*7"}
            await turn.submit_tool_results({pending.use.id or "": "42"})
    result = await turn.result()
    assert "42" in result.text
    assert turn.pending_tool_calls == ()


async def test_failing_or_missing_tool_is_reported_to_the_agent(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def boom(args: Mapping[str, Any]) -> str:
        raise ValueError("no such city")

    server.script = tool_script("lookup", {"city": "Atlantis"})
    turn = await client.session(session_id).send("x", tools={"lookup": boom})
    result = await turn.result()
    (call,) = result.tool_calls
    assert call.is_error
    assert "no such city" in (call.output or "")


async def test_the_event_deltas_default_follows_the_reader(
    client: QoderClient, server: FakeQoderServer
) -> None:
    """The turn API asks for ``agent.message`` previews; the event streams ask for none.

    A session created with incremental streaming needs no asking: its live text
    comes from its incremental events even on a handle that asks for no previews.
    """
    reply = "incremental words, one by one, " * 3

    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.1)
        await ctx.message(reply, chunks=6, delay=0.01)

    server.script = slow
    plain = server.add_session()["id"]
    await (await client.session(plain).send("go")).result()
    async with client.sessions.events.stream(plain) as stream:
        async for ev in stream:
            if isinstance(ev, SessionStatusIdle):
                break
    streams = [r for r in server.requests if r.path.endswith("/events/stream")]
    assert [r.query.get("event_deltas[]") for r in streams] == [["agent.message"], None]

    incremental = server.add_session(incremental_streaming_enabled=True)["id"]
    assert (await client.sessions.retrieve(incremental)).incremental_streaming_enabled is True
    turn = await client.session(incremental, event_deltas=()).send("go")
    chunks = [c async for c in turn.text_stream()]
    assert len(chunks) > 1  # live, not only the final message
    assert "".join(chunks) == (await turn.result()).text == reply


async def test_live_text_of_a_reply_that_began_before_the_turn_connected(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """The turn's connection (opened after the 202) still gets the preview from its start.

    The agent starts answering before the stream connects (the connection is
    slowed); its first fragments are live text, not lost until the message.
    """
    gate = asyncio.Event()
    server.script = held_message(["Hel", "lo ", "wor", "ld"], 2, gate)
    server.faults.slow_stream_seconds = 0.2
    turn = await client.session(session_id).send("go")
    chunks: list[str] = []

    async def read() -> None:
        async for chunk in turn.text_stream():
            chunks.append(chunk)

    reader = asyncio.create_task(read())
    await eventually(lambda: "".join(chunks) == "Hello ", "the live text sent before connecting")
    gate.set()
    await reader
    assert "".join(chunks) == (await turn.result()).text == "Hello world"


# ----------------------------------------------------------------------------- sharing


async def test_parallel_turns_and_a_listener_share_one_connection_per_session(
    client: QoderClient, server: FakeQoderServer
) -> None:
    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.1)
        await ctx.message(f"reply to {ctx.text}")

    server.script = slow
    server.dialect.turn_ids = True  # the record of each run is found by its turn id
    s1, s2 = server.add_session()["id"], server.add_session()["id"]
    h1, h2 = client.session(s1), client.session(s2)
    heard: list[Event] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async for ev in h1.listen():
            heard.append(ev)
            ready.set()
            if len([e for e in heard if isinstance(e, SessionStatusIdle)]) == 2:
                return

    listener = asyncio.create_task(listen())
    await h1.wait_connected()

    async def two_turns(h: Any) -> list[list[Event]]:
        out = []
        for text in ("a", "b"):
            turn = await h.send(f"{h.id}:{text}")
            out.append([ev async for ev in turn])
        return out

    r1, r2 = await asyncio.gather(two_turns(h1), two_turns(h2))
    await listener
    # s1's connection was already open (the listener): each turn also sees its own
    # user.message; s2's turns open it right after their user.message.
    for sid, runs, skip in ((s1, r1, 0), (s2, r2, 1)):
        assert len({ev.turn_id for run in runs for ev in run}) == 2
        for run in runs:
            record = server.turn_events(sid, run[-1].turn_id or "")
            assert [e.id for e in run] == [e["id"] for e in record[skip:]]
    # the listener saw both turns of s1, in order, including our user.messages
    assert [e.id for e in heard] == [e["id"] for e in server.stored_events(s1)][-len(heard) :]
    assert sum(isinstance(e, UserMessage) for e in heard) == 2
    assert h1.connections == 1  # turns and the listener shared the connection
    assert h2.connections == 2  # no listener: one connection per turn, one at a time


async def test_slow_listener_applies_backpressure_without_loss(
    server: FakeQoderServer,
) -> None:
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        sid = server.add_session()["id"]
        handle = client.session(sid, queue_size=2)
        heard: list[Event] = []

        async def listen() -> None:
            async for ev in handle.listen():
                await asyncio.sleep(0.01)
                heard.append(ev)
                if isinstance(ev, SessionStatusIdle):
                    return

        task = asyncio.create_task(listen())
        await handle.wait_connected()
        await (await handle.send("hi")).result()
        await task
        assert [e.id for e in heard] == [e["id"] for e in server.stored_events(sid)]


async def test_leaving_the_client_context_closes_everything(server: FakeQoderServer) -> None:
    server.script = forever
    sid = server.add_session()["id"]
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        turn = await client.session(sid).send("go")
        listener = client.session(sid).listen()
        await client.session(sid).wait_connected()
        assert server.open_streams == 1
    with pytest.raises(ClientClosedError):
        await turn.result()
    with pytest.raises(ClientClosedError):
        await listener.__anext__()
    await listener.aclose()
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


@pytest.mark.both_transports
async def test_breaking_out_of_a_listener_closes_the_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    handle = client.session(session_id)

    async def listen() -> None:
        async for _ in handle.listen():
            break

    task = asyncio.create_task(listen())
    await handle.wait_connected()
    await (await handle.send("x")).result()
    await task
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")
    assert not handle.connected


# ----------------------------------------------------------------------------- dialects


@pytest.mark.parametrize(
    "dialect",
    [
        Dialect(),
        Dialect(turn_ids=True, event_metadata=True, stream_data_ids=True),
        OldWire(turn_ids=True, data_ids=False),
        OldWire(turn_ids=True, string_content=True, legacy_idle=True, thinking_field="content"),
        OldWire(turn_ids=True, heartbeat="event", send_status=200, create_status=200, retry_ms=20),
        OldWire(heartbeat="ping", data_ids=False, legacy_idle=True),
    ],
    ids=["production", "turn-ids", "no-data-ids", "old-shapes", "heartbeat-events", "oldest"],
)
async def test_every_wire_dialect_gives_the_same_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str, dialect: Dialect
) -> None:
    server.dialect = dialect
    session = client.session(session_id)
    for text in ("one", "two"):
        turn = await session.send(text)
        events = [ev async for ev in turn]
        result = await turn.result()
        assert f'"{text}"' in result.text
        assert isinstance(events[-1], SessionStatusIdle)
        assert any(isinstance(e, AgentMessage) for e in events)
        stored = server.stored_events(session_id)
        anchor = [e["id"] for e in stored].index(turn.accepted.last_event_id)
        assert [e.id for e in events] == [e["id"] for e in stored[anchor + 1 :]]


# ----------------------------------------------------------------------------- faults at scale


async def test_many_sessions_under_faults_match_the_server_record() -> None:
    """50 sessions x 5 turns, random mid-frame drops, replayed duplicates, stalls."""
    rng = random.Random(20261128)

    async def chatty(ctx: TurnContext) -> None:
        await ctx.sleep(rng.random() * 0.05)
        await ctx.thinking("hmm")
        await ctx.tool("Read", {"file_path": "x.py"}, "print(1)")
        await ctx.message(f"reply to {ctx.text}", chunks=3, delay=0.005)

    async with FakeQoderServer(heartbeat_interval=0.05, script=chatty, seed=7) as server:
        server.faults.drop_probability = 0.08
        server.faults.duplicate_on_resume = 3
        server.faults.stall_probability = 0.03
        async with QoderClient(
            token=server.token, base_url=server.base_url, reconnect=FAST
        ) as client:
            sids = [server.add_session()["id"] for _ in range(50)]

            async def run(sid: str) -> list[tuple[str, list[str]]]:
                # Client and server share one loop here: under load a generous
                # give-up bound keeps slow delivery from reading as a dead stream.
                handle = client.session(sid, stall_timeout=0.4, max_stalls=50)
                out = []
                for i in range(5):
                    turn = await handle.send(f"{sid} #{i}")
                    got = [ev.id or "" async for ev in turn]
                    out.append((turn.accepted.last_event_id or "", got))
                return out

            results = await asyncio.gather(*(run(s) for s in sids))
        for sid, turns in zip(sids, results, strict=True):
            for anchor, got in turns:
                assert got == turn_record(server, sid, anchor), f"{sid} {anchor}"
            assert len(server.user_messages(sid)) == 5
        assert server.fault_counts.get("drop_probability", 0) > 10
        assert server.fault_counts.get("duplicate_on_resume", 0) > 10
        assert server.fault_counts.get("stall_probability", 0) > 0
        await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


async def test_callback_handlers_run_on_the_shared_connection(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    session = client.session(session_id)
    seen: list[str] = []
    texts: list[str] = []
    idle = asyncio.Event()

    @session.on(AgentMessage)
    async def on_message(ev: Event) -> None:
        assert isinstance(ev, AgentMessage)
        texts.append(ev.text)

    def on_any(ev: Event) -> None:
        seen.append(ev.type)
        if ev.type == "session.status_idle":
            idle.set()

    def broken(ev: Event) -> None:
        raise RuntimeError("a bot bug")

    session.on("*", on_any)
    session.on("session.status_running", broken)
    await session.wait_connected()
    turn = await session.send("hello")
    await turn.result()
    await idle.wait()
    assert texts == [(await turn.result()).text]
    assert seen[0] == "user.message"
    assert seen[-1] == "session.status_idle"
    session.off(AgentMessage, on_message)
    session.off("*")
    session.off("session.status_running")
    assert session.handlers == 0


async def test_a_busy_retry_keeps_the_callers_idempotency_key(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """Every attempt carries the caller's key; a resend is stored once."""

    def posts() -> list[Any]:
        return [r for r in server.requests if r.method == "POST" and r.path.endswith("/events")]

    async def slow(ctx: TurnContext) -> None:
        # The first turn runs until the second send was refused as busy (bounded): a
        # fixed 0.2 s could run out on a loaded machine before the second send posted.
        for _ in range(2000):
            if len(posts()) >= 2:
                return
            await ctx.sleep(0.01)

    server.script = slow
    session = client.session(session_id)
    await session.send("first", idempotency_key="k")
    second = await session.send("second", on_busy="wait", idempotency_key="k2")
    await second.result()
    keys = [r.headers.get("idempotency-key") for r in posts()]
    assert keys[0] == "k"
    assert len(keys) > 2, "the second send was never refused as busy"
    assert set(keys[1:]) == {"k2"}
    again = await client.sessions.events.send(session_id, "second", idempotency_key="k2")
    assert again.events[0].id == second.accepted.anchor.id  # type: ignore[union-attr]
    assert len(server.user_messages(session_id)) == 2


async def test_coalesced_text_is_flushed_when_the_interval_is_up(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def script(ctx: TurnContext) -> None:
        await ctx.sleep(0.2)
        await ctx.message("Hello world, here is the first part.", chunks=4)
        await ctx.sleep(1.0)  # a long tool run: no events at all
        await ctx.message("And the second.", chunks=2)

    server.script = script
    turn = await client.session(session_id).send("go")
    updates = [u async for u in turn.text_stream(coalesce=0.3)]
    # the first message is shown in full before the second one starts
    assert "Hello world, here is the first part." in updates
    assert updates[-1] == "Hello world, here is the first part.\n\nAnd the second."


async def test_a_failed_result_post_is_retried_without_rerunning_the_tool(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    from qoder_async import BadRequestError
    from qoder_async.testing import CannedResponse

    runs: list[str] = []

    async def lookup(args: Mapping[str, Any]) -> str:
        runs.append(str(args))
        return "42"

    server.script = tool_script("lookup", {"q": "x"})
    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"try later"}}'
    server.faults.respond_next = [
        CannedResponse("POST", r"/events$", 400, {"Content-Type": "application/json"}, body)
    ]
    with pytest.raises(BadRequestError):
        await turn.result()
    result = await turn.result()  # reading again posts the kept results
    assert runs == ["{'q': 'x'}"]
    assert "42" in result.text


# ----------------------------------------------------------------------------- new users


async def test_an_interrupted_turn_says_so_and_keeps_the_text_shown(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """Interrupted after nine chunks were shown: not EndTurn() with ''."""
    shown = asyncio.Event()

    async def long_reply(ctx: TurnContext) -> None:
        await ctx.sleep(0.1)
        with contextlib.suppress(RuntimeError):  # the interrupt ends the turn mid-message
            await ctx.message("one two three four five six seven eight nine ten " * 3, chunks=30,
                              delay=0.02)  # fmt: skip

    server.script = long_reply
    turn = await client.session(session_id).send("talk")
    chunks: list[str] = []
    async for chunk in turn.text_stream():
        chunks.append(chunk)
        if len(chunks) == 9 and not shown.is_set():
            shown.set()
            await turn.interrupt()
    result = await turn.result()
    assert result.interrupted
    assert result.text == "".join(chunks)
    assert result.text.startswith("one two")
    assert result.messages == ()  # no message was stored: the text is what was shown
    assert str(result.stop_reason) == "end_turn"


@pytest.mark.parametrize("coalesce", [None, 0.05])
async def test_text_stream_ends_when_the_turn_ended_while_a_chunk_was_held(
    client: QoderClient, server: FakeQoderServer, session_id: str, coalesce: float | None
) -> None:
    """The turn ends while the consumer holds a chunk (awaiting something else): no
    wake-up comes after that, so the stream must look again before it waits."""

    async def two_messages(ctx: TurnContext) -> None:
        await ctx.message("first")
        await ctx.sleep(0.3)
        await ctx.message("second")

    server.script = two_messages
    turn = await client.session(session_id).send("hello")
    chunks: list[str] = []
    async with asyncio.timeout(20):  # hung for ever before the fix
        async for chunk in turn.text_stream(coalesce=coalesce):
            chunks.append(chunk)
            if len(chunks) == 1:
                await turn.result()  # the rest of the turn arrives meanwhile
    result = await turn.result()
    assert result.text
    assert (chunks[-1] if coalesce else "".join(chunks)) == result.text


def test_stop_reasons_print_as_their_type() -> None:
    assert str(EndTurn()) == "end_turn"
    assert str(RequiresAction(("e1",))) == "requires_action"
    assert f"{UnknownStopReason('refusal')}" == "refusal"


async def test_a_session_handle_takes_the_streams_read_timeout(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """``client.session(read_timeout=)``, as ``events.stream()`` has: a connection
    silent for longer (no heartbeat either) is dropped and resumed."""
    server.heartbeat_interval = 60.0  # nothing at all on an idle stream
    handle = client.session(session_id, read_timeout=0.3)
    assert handle.options["read_timeout"] == 0.3

    async def listen() -> None:
        async for _ in handle.listen():
            pass

    listener = asyncio.create_task(listen())
    try:
        await eventually(
            lambda: server.stream_connections >= 2, "a reconnect after 0.3 s of silence"
        )
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_a_handle_asked_again_with_other_options_says_so(client: QoderClient) -> None:
    """New options on an existing handle are not silently ignored."""
    handle = client.session("sess_x", stall_timeout=30.0)
    assert client.session("sess_x") is handle  # no options: the same handle
    assert client.session("sess_x", stall_timeout=30.0) is handle
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        client.session("sess_x", stall_timeout=5.0)


def test_help_documents_what_the_client_has() -> None:
    doc = pydoc.render_doc(QoderClient)
    for name in ("sessions", "agents", "environments", "with_options", "session("):
        assert name in doc
    for knob in ("token", "base_url", "http_client", "timeout", "retry", "reconnect"):
        assert knob in (QoderClient.__doc__ or "")
    assert "stream_read_timeout" not in doc  # no argument of that name exists


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"on_tool_error": "ignore"}, ConfigurationError),
        ({"tools": [object()]}, TypeError),
        ({"max_concurrent_calls": 0}, ConfigurationError),
    ],
    ids=["on_tool_error", "tools", "max_concurrent_calls"],
)
async def test_bad_tool_options_are_refused_before_anything_is_posted(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    options: dict[str, Any],
    error: type[Exception],
) -> None:
    """A refused option posts no message (the agent would run a turn nobody follows) and
    leaves the handle as it was: its next send is followed as usual."""
    handle = client.session(session_id)
    with pytest.raises(error):
        await handle.send("hello", **options)
    with pytest.raises(error):
        await handle.follow(**options)
    posts = [r for r in server.requests if r.method == "POST" and r.path.endswith("/events")]
    assert posts == []
    assert handle._router.waiting == 0
    result = await asyncio.wait_for((await handle.send("hello")).result(), 30)
    assert result.stop_reason == EndTurn()
