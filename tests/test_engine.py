"""The turn engine against the fake server: each test failed on the old engine.

The rules themselves are proven exhaustively in ``test_engine_core.py`` (sans
I/O); these show the whole client keeps them on a real HTTP + SSE connection.
Long turns, a server that ignores the cursor and a failing cursor store are in
``test_stream.py``; client lifetimes and throttling gateways in ``test_client.py``;
a gateway echoing the token in ``test_security.py``.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import FAST, forever, turn_record

from qoder_async import (
    ConflictError,
    IdempotencyConflictError,
    QoderClient,
    RequestInProgressError,
    SessionBusyError,
    StreamStalledError,
    ToolResultsNotAwaitedError,
    UserMessage,
)
from qoder_async._core import errors as errors_module
from qoder_async._core.errors import CONFLICT_RULES, conflict_class, conflict_table
from qoder_async._core.models import Event
from qoder_async.testing import (
    Dialect,
    FakeQoderServer,
    TurnContext,
    subagent_tool_script,
    tool_script,
)
from qoder_async.types import AgentMessage, SessionStatusIdle, UserCustomToolResult


def stored_after(server: FakeQoderServer, sid: str, anchor: str | None) -> list[str]:
    ids = [e["id"] for e in server.stored_events(sid)]
    return ids[ids.index(anchor) + 1 :] if anchor else ids


# ------------------------------------------------------------- replayed history


async def test_without_turn_ids_a_replayed_tail_does_not_end_the_next_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.dialect = Dialect(turn_ids=False)
    server.faults.duplicate_on_resume = 4  # the previous turn's tail, on every connection
    server.faults.reorder_on_replay = True
    session = client.session(session_id)
    for text in ("first", "second", "third"):
        turn = await session.send(text)
        events = [ev.id async for ev in turn]
        result = await turn.result()
        assert events == turn_record(server, session_id, turn.accepted.last_event_id or "")
        assert f'"{text}"' in result.text
        assert result.stop_reason is not None
    assert server.fault_counts["duplicate_on_resume"] > 0


async def test_a_new_listener_hears_no_old_history_as_new(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await client.sessions.events.send(session_id, UserMessage("old"))
    await server.wait_idle(session_id)
    server.faults.ignore_last_event_id = True  # every connection replays from the start
    session = client.session(session_id)
    heard: list[Event] = []

    async def listen() -> None:
        async for ev in session.listen():
            heard.append(ev)
            if isinstance(ev, SessionStatusIdle):
                return

    listener = asyncio.create_task(listen())
    await session.wait_connected()
    acc = await client.sessions.events.send(session_id, UserMessage("new"))
    await listener
    new = [acc.last_event_id, *stored_after(server, session_id, acc.last_event_id)]
    assert [e.id for e in heard] == new
    assert server.fault_counts["ignore_last_event_id"] >= 1


# --------------------------------------------------------------------- turn ids


async def test_an_answer_without_turn_id_adopts_the_streamed_one(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.dialect.turn_ids = True  # streamed and listed; the send answer has none
    server.dialect.send_turn_ids = False
    session = client.session(session_id, stall_timeout=5.0, max_stalls=1)
    turn = await session.send("hello")
    assert turn.accepted.turn_id is None
    events = [ev async for ev in turn]  # the old router sent these to nobody: a hang
    assert turn.turn_id is not None
    assert [e.id for e in events] == turn_record(server, session_id, turn.accepted.last_event_id)
    assert {e.turn_id for e in events} == {turn.turn_id}


# ----------------------------------------------------------------- text streams


@pytest.mark.parametrize("incremental", [False, True], ids=["event-deltas", "incremental"])
async def test_text_stream_after_reconnects_mid_message_joins_to_the_text(
    client: QoderClient, server: FakeQoderServer, incremental: bool
) -> None:
    reply = " ".join(f"word{i}" for i in range(40))

    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(0.1)
        await ctx.message(reply, chunks=20, delay=0.005)
        await ctx.message("And a second message.", chunks=5, delay=0.005)

    server.script = slow
    sid = server.add_session(incremental_streaming_enabled=incremental)["id"]
    server.faults.drop_probability = 0.15
    server.faults.duplicate_on_resume = 2
    client.reconnect_policy = FAST
    for _ in range(3):
        turn = await client.session(sid).send("go")
        chunks = [c async for c in turn.text_stream()]
        result = await turn.result()
        assert "".join(chunks) == result.text
        assert result.text.endswith("And a second message.")
    assert server.fault_counts["drop_probability"] > 0


# ----------------------------------------------------------------------- stalls


async def test_a_pause_for_tool_results_is_not_a_stall(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {"expr": "6*7"})
    session = client.session(session_id, stall_timeout=0.1, max_stalls=2)
    turn = await session.send("compute")
    (pending,) = await turn.wait_for_action()
    await asyncio.sleep(0.6)  # three times the stall bound: a person thinks it over
    await turn.submit_tool_results({pending.id: "42"})
    result = await turn.result()
    assert result.text == "calc returned: 42"


@pytest.mark.both_transports
async def test_a_silent_server_ends_the_turn_with_a_typed_error(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.silent_stream = True  # headers, then not a byte, not even a heartbeat
    session = client.session(session_id, stall_timeout=0.2, max_stalls=3)
    turn = await session.send("hello?")
    with pytest.raises(StreamStalledError) as info:
        await turn.result()
    assert info.value.stalls == 3
    assert server.stream_connections >= 2  # it reconnected in between


# ----------------------------------------------------------------- cancellation


@pytest.mark.both_transports
async def test_cancelling_the_reader_while_a_tool_runs_does_not_strand_the_turn(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("lookup", {"q": "x"})
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[Mapping[str, Any]] = []

    async def lookup(args: Mapping[str, Any]) -> str:
        runs.append(args)
        started.set()
        await release.wait()
        return "found it"

    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    reader = asyncio.create_task(turn.result())
    await started.wait()
    reader.cancel()  # the bot's request handler gave up, say
    with pytest.raises(asyncio.CancelledError):
        await reader
    release.set()
    result = await turn.result()
    assert result.text == "lookup returned: found it"
    assert runs == [{"q": "x"}]


async def test_closing_a_turn_while_its_tool_runs_posts_an_error_result(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("lookup", {"q": "x"})
    started = asyncio.Event()

    async def lookup(args: Mapping[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()  # never finishes by itself
        return "unreachable"

    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    await started.wait()
    await turn.aclose()
    await server.wait_idle(session_id)
    (result,) = [
        e for e in server.stored_events(session_id) if e["type"] == "user.custom_tool_result"
    ]
    assert result["is_error"] is True
    assert "stopped" in result["content"][0]["text"]


# ------------------------------------------------------------------- interrupts


async def test_interrupting_a_finished_turn_is_a_no_op(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    session = client.session(session_id)
    turn = await session.send("one")
    await turn.result()
    server.script = forever
    nxt = await session.send("two")
    assert await turn.interrupt() is None  # must not interrupt "two"
    types = [e["type"] for e in server.stored_events(session_id)]
    assert "user.interrupt" not in types
    await nxt.interrupt()
    assert (await nxt.result()).interrupted


# -------------------------------------------------------------------- callbacks


async def test_a_callback_may_send_and_await_a_turn_on_its_own_session(
    client: QoderClient, server: FakeQoderServer
) -> None:
    async def chatty(ctx: TurnContext) -> None:
        for i in range(30):  # more events than the listener queue holds
            ctx.emit("agent.thinking", thinking=f"step {i}")
        await ctx.message(f"done: {ctx.text}")

    server.script = chatty
    sid = server.add_session()["id"]
    session = client.session(sid, queue_size=4)
    replies: list[str] = []
    finished = asyncio.Event()

    @session.on(UserMessage)
    async def follow_up(ev: Event) -> None:
        assert isinstance(ev, UserMessage)
        if ev.text == "first":
            turn = await session.send("second")
            replies.append((await turn.result()).text)
            finished.set()

    await session.wait_connected()
    await (await session.send("first")).result()
    async with asyncio.timeout(10):
        await finished.wait()
    assert replies == ["done: second"]
    session.off()


# ---------------------------------------------------------------- busy sessions


async def test_waiting_on_a_session_paused_elsewhere_backs_off_and_says_why(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {"expr": "1"})
    await client.sessions.events.send(session_id, UserMessage("paused by another client"))
    await server.wait_for_event(session_id, "session.status_idle")  # requires_action
    assert server.session(session_id)["status"] == "idle"
    posts_before = len([r for r in server.requests if r.method == "POST"])
    with pytest.raises(SessionBusyError, match="requires_action"):
        await client.session(session_id).send("hi", on_busy="wait", busy_timeout=1.5)
    posts = len([r for r in server.requests if r.method == "POST"]) - posts_before
    assert posts < 12  # it backed off; the old loop spun thousands of times


# -------------------------------------------------------------- session handles


async def test_unused_session_handles_are_released(client: QoderClient) -> None:
    refs = [weakref.ref(client.session(f"sess_{i:05d}")) for i in range(2000)]
    gc.collect()
    assert all(r() is None for r in refs)
    kept = client.session("sess_kept")
    assert client.session("sess_kept") is kept  # still one handle while in use


# -------------------------------------------------------------- conflicts (409)


@pytest.mark.parametrize(
    ("code", "message", "method", "path", "idempotent", "starts_turn", "expected"),
    [
        (None, "A request with this Idempotency-Key is in progress", "POST",
         "/sessions/s/events", True, True, RequestInProgressError),
        (None, "Idempotency-Key reused with a different request body", "POST",
         "/sessions/s/events", True, True, IdempotencyConflictError),
        (None, "tool results not awaited: evt_1 is not awaiting a result", "POST",
         "/sessions/s/events", True, False, ToolResultsNotAwaitedError),
        (None, "a turn is in progress", "POST", "/sessions/s/events", True, True,
         SessionBusyError),
        (None, "session is waiting for tool results (requires_action)", "POST",
         "/sessions/s/events", True, True, SessionBusyError),
        ("session_busy", "", "POST", "/sessions/s/events", True, True, SessionBusyError),
        (None, "agent version conflict", "POST", "/agents/a", False, False, ConflictError),
        (None, "duplicate", "POST", "/sessions/s/events", True, False, ConflictError),
    ],
)  # fmt: skip
def test_the_409_table(
    code: str | None,
    message: str,
    method: str,
    path: str,
    idempotent: bool,
    starts_turn: bool,
    expected: type,
) -> None:
    got = conflict_class(
        code=code,
        message=message,
        method=method,
        path=path,
        idempotent=idempotent,
        starts_turn=starts_turn,
    )
    assert got is expected


def test_the_errors_docstring_shows_the_409_table_the_code_runs() -> None:
    """Every row of CONFLICT_RULES, as conflict_class runs it, is drawn in the docstring
    (it once held only the table's top border)."""
    table = conflict_table()
    assert table in (errors_module.__doc__ or ""), f"paste into _core/errors.py:\n{table}"
    assert all(rule.cls.__name__ in table for rule in CONFLICT_RULES)


async def test_a_result_nobody_awaits_is_not_a_busy_session(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {"expr": "1"})
    turn = await client.session(session_id).send("go")
    (pending,) = await turn.wait_for_action()
    await turn.submit_tool_results({pending.id: "1"})
    await turn.result()
    with pytest.raises(ToolResultsNotAwaitedError):
        await client.sessions.events.send(session_id, UserCustomToolResult(pending.id, "again"))


async def test_a_request_still_in_progress_is_waited_for_not_failed(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.slow_seconds = 0.3
    first = asyncio.create_task(
        client.sessions.events.send(session_id, UserMessage("once"), idempotency_key="k-1")
    )
    await asyncio.sleep(0.05)  # the first request is in the server's hands
    second = await client.sessions.events.send(
        session_id, UserMessage("once"), idempotency_key="k-1"
    )
    assert (await first).last_event_id == second.last_event_id
    server.faults.slow_seconds = 0
    await server.wait_idle(session_id)
    assert len(server.user_messages(session_id)) == 1


# ---------------------------------------------------------------------- threads


async def test_a_sub_agents_tool_result_is_answered_in_its_thread(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = subagent_tool_script("lookup", {"q": "x"})

    async def lookup(args: Mapping[str, Any]) -> str:
        return "42"

    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    result = await turn.result()  # the fake answers 400 unless session_thread_id is echoed
    assert result.text == "worker reports: lookup returned: 42"
    (posted,) = [
        e for e in server.stored_events(session_id) if e["type"] == "user.custom_tool_result"
    ]
    assert posted["session_thread_id"] is not None


# ----------------------------------------------- answers without created events


@pytest.mark.parametrize("listening", [False, True], ids=["new-connection", "open-connection"])
async def test_an_answer_without_created_events_is_followed_not_resent(
    client: QoderClient, server: FakeQoderServer, session_id: str, listening: bool
) -> None:
    session = client.session(session_id)
    await (await session.send("before")).result()
    listener = None
    if listening:

        async def listen() -> None:
            async for _ in session.listen():
                pass

        listener = asyncio.create_task(listen())
        await session.wait_connected()
    server.faults.empty_send_data = 1
    turn = await session.send("hello")
    assert turn.accepted.events == ()
    result = await turn.result()
    assert '"hello"' in result.text
    assert [m["content"][0]["text"] for m in server.user_messages(session_id)] == [
        "before",
        "hello",
    ]
    if listener is not None:
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener


async def test_a_message_split_across_turns_is_never_mixed(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """Both paths at once: a listener on the connection, turns without turn ids."""
    server.dialect = Dialect(turn_ids=False)
    session = client.session(session_id)
    heard: list[str] = []

    async def listen() -> None:
        async for ev in session.listen():
            if isinstance(ev, AgentMessage):
                heard.append(ev.text)
                if len(heard) == 3:
                    return

    listener = asyncio.create_task(listen())
    await session.wait_connected()
    texts = []
    for text in ("a", "b", "c"):
        texts.append((await (await session.send(text)).result()).text)
    await listener
    assert [f'"{t}"' in got for t, got in zip("abc", texts, strict=True)] == [True] * 3
    assert heard == texts
