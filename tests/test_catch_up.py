"""Webhook-driven turns: folding a session's history since a cursor into turns.

``fold_history`` is pure (tested on hand-built events); ``session.catch_up`` lists
the events after the cursor and must give the TurnResults the stream path gives.
"""

from __future__ import annotations

from typing import Any

import pytest

from qoder_async import CatchUp, Cursor, QoderClient, TurnResult, UserMessage
from qoder_async._core.models import Event
from qoder_async._core.turns import fold_history
from qoder_async.testing import (
    FakeQoderServer,
    multiagent_script,
    tool_script,
)
from qoder_async.types import (
    AgentCustomToolUse,
    AgentMessage,
    EndTurn,
    PreviewDelta,
    PreviewStart,
    RequiresAction,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    SessionUpdated,
    TextBlock,
    UserCustomToolResult,
    UserDefineOutcome,
)


def at(n: int) -> str:
    return f"2026-12-01T10:00:{n:02d}.000000000Z"


def turn(n: int, text: str, *, end: bool = True) -> list[Event]:
    """One turn's stored events: message, running, reply, idle."""
    out: list[Event] = [
        UserMessage(f"question {n}", id=f"u{n}", processed_at=at(n * 4)),
        SessionStatusRunning(id=f"r{n}", processed_at=at(n * 4 + 1)),
        AgentMessage((TextBlock(text),), id=f"m{n}", processed_at=at(n * 4 + 2)),
    ]
    if end:
        out.append(SessionStatusIdle(EndTurn(), id=f"i{n}", processed_at=at(n * 4 + 3)))
    return out


def test_a_turn_per_message_and_the_cursor_after_them() -> None:
    caught = fold_history([*turn(1, "one"), *turn(2, "two")])
    assert [t.text for t in caught.turns] == ["one", "two"]
    assert all(t.ended and t.stop_reason == EndTurn() for t in caught.turns)
    assert [e.id for e in caught.turns[0].events] == ["u1", "r1", "m1", "i1"]
    assert caught.pending is None
    assert caught.cursor == Cursor("i2", at(11))


def test_a_running_turn_is_pending_and_the_cursor_stops_before_it() -> None:
    start = Cursor("i0", at(0))
    caught = fold_history([*turn(1, "one"), *turn(2, "partial", end=False)], start)
    assert [t.text for t in caught.turns] == ["one"]
    assert caught.pending is not None
    assert caught.pending.text == "partial"
    assert not caught.pending.ended
    assert caught.cursor == Cursor("i1", at(7))
    # Only a pending turn: the cursor does not move.
    alone = fold_history(turn(2, "partial", end=False), start)
    assert alone.turns == ()
    assert alone.cursor == start


def test_a_turn_paused_for_tools_is_pending_with_its_calls() -> None:
    events: list[Event] = [
        UserMessage("weather?", id="u1"),
        AgentCustomToolUse(id="use1", name="get_weather", input={"city": "Paris"}),
        SessionStatusIdle(RequiresAction(("use1",)), id="p1"),
    ]
    caught = fold_history(events)
    assert caught.turns == ()
    assert caught.pending is not None
    [call] = caught.pending.pending_tool_calls
    assert (call.id, call.name) == ("use1", "get_weather")
    assert caught.cursor is None
    answered = fold_history(
        [
            *events,
            UserCustomToolResult("use1", "sunny", id="a1"),
            SessionStatusRunning(id="r2"),
            AgentMessage((TextBlock("It is sunny."),), id="m1"),
            SessionStatusIdle(EndTurn(), id="i1"),
        ]
    )
    [done] = answered.turns
    assert done.text == "It is sunny."
    assert done.tool_calls[0].output == "sunny"
    assert answered.cursor == Cursor("i1")


def test_events_between_turns_belong_to_no_turn() -> None:
    events = [*turn(1, "one"), SessionUpdated(id="up"), *turn(2, "two")]
    caught = fold_history(events)
    assert [e.id for e in caught.turns[0].events] == ["u1", "r1", "m1", "i1"]
    assert [e.id for e in caught.turns[1].events] == ["u2", "r2", "m2", "i2"]
    only_housekeeping = fold_history([SessionUpdated(id="up")], Cursor("i1"))
    assert only_housekeeping == CatchUp(cursor=Cursor("up"))


def test_a_cursor_inside_a_turn_gives_the_rest_of_that_turn() -> None:
    rest = turn(1, "one")[2:]  # the cursor was the turn's running event
    caught = fold_history([*rest, *turn(2, "two")], Cursor("r1"))
    assert [t.text for t in caught.turns] == ["one", "two"]
    assert [e.id for e in caught.turns[0].events] == ["m1", "i1"]
    unfinished = fold_history(rest[:1], Cursor("r1"))
    assert unfinished.pending is not None
    assert unfinished.pending.text == "one"
    assert unfinished.cursor == Cursor("r1")


def test_previews_are_dropped_and_outcomes_start_turns() -> None:
    events: list[Event] = [
        UserDefineOutcome("all tests pass", id="o1"),
        PreviewStart(id="m1", event_id="m1", event_type="agent.message"),
        PreviewDelta(id="m1", event_id="m1", content=TextBlock("Wor")),
        AgentMessage((TextBlock("Working on it."),), id="m1"),
        SessionStatusIdle(EndTurn(), id="i1"),
    ]
    [result] = fold_history(events).turns
    assert result.text == "Working on it."
    assert [e.id for e in result.events] == ["o1", "m1", "i1"]


def test_a_turn_that_never_ended_is_reported_when_another_starts() -> None:
    caught = fold_history([*turn(1, "lost", end=False), *turn(2, "two")])
    assert [(t.text, t.ended) for t in caught.turns] == [("lost", False), ("two", True)]
    assert caught.cursor == Cursor("i2", at(11))


def test_a_terminated_session_fails_the_turn() -> None:
    caught = fold_history([*turn(1, "one", end=False), SessionStatusTerminated(id="x")])
    [failed] = caught.turns
    assert failed.ended
    assert failed.failed
    assert caught.pending is None
    assert caught.cursor == Cursor("x")


def test_nothing_new_keeps_the_cursor() -> None:
    assert fold_history([], Cursor("i9")) == CatchUp(cursor=Cursor("i9"))
    assert fold_history([]) == CatchUp()


# --------------------------------------------------------------------------- against the fake


def same_turn(caught: TurnResult, streamed: TurnResult) -> None:
    """A caught-up turn equals the streamed one; its events may start with its own message."""
    assert caught.text == streamed.text
    assert caught.messages == streamed.messages
    assert caught.stop_reason == streamed.stop_reason
    assert caught.tool_calls == streamed.tool_calls
    assert caught.usage == streamed.usage
    assert caught.threads == streamed.threads
    assert caught.turn_id == streamed.turn_id
    assert (caught.ended, caught.failed) == (streamed.ended, streamed.failed)
    tail = [e for e in caught.events if not isinstance(e, UserMessage)]
    assert tail == [e for e in streamed.events if not isinstance(e, UserMessage)]


@pytest.mark.parametrize("script", [None, multiagent_script], ids=["default", "multiagent"])
async def test_catch_up_gives_the_turns_the_stream_gives(
    client: QoderClient, server: FakeQoderServer, session_id: str, script: Any
) -> None:
    if script is not None:
        server.script = script
    session = client.session(session_id)
    streamed = [await (await session.send(text)).result() for text in ("first", "second")]
    caught = await session.catch_up(limit=3)
    assert len(caught.turns) == 2
    for got, want in zip(caught.turns, streamed, strict=True):
        same_turn(got, want)
    assert isinstance(caught.turns[0].events[0], UserMessage)
    assert caught.pending is None
    last = server.stored_events(session_id)[-1]
    assert caught.cursor == Cursor(last["id"], last["processed_at"])
    # From the cursor: nothing new, and the cursor stays.
    again = await session.catch_up(last_event_id=caught.cursor)
    assert again == CatchUp(cursor=caught.cursor)
    # A plain event id works as well.
    third = await (await session.send("third")).result()
    newer = await session.catch_up(last_event_id=caught.cursor.event_id)
    [got] = newer.turns
    same_turn(got, third)


async def test_catch_up_opens_no_stream(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    await client.sessions.events.send(session_id, UserMessage("no stream"))
    await server.wait_idle(session_id)
    caught = await client.session(session_id).catch_up()
    [result] = caught.turns
    assert result.text.startswith('You said: "no stream"')
    assert server.stream_connections == 0
    assert not [r for r in server.requests if r.path.endswith("/stream")]


async def test_catch_up_with_a_paused_turn_then_its_answer(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("get_weather", {"city": "Paris"})
    await client.sessions.events.send(session_id, UserMessage("weather?"))
    await server.wait_for_event(session_id, "session.status_idle")
    session = client.session(session_id)
    paused = await session.catch_up()
    assert paused.turns == ()
    assert paused.pending is not None
    [call] = paused.pending.pending_tool_calls
    assert call.name == "get_weather"
    assert paused.cursor is None  # the pending turn is folded whole next time
    await session.send_events([UserCustomToolResult(call.id, "18°C")])
    await server.wait_idle(session_id)
    done = await session.catch_up(last_event_id=paused.cursor)
    [result] = done.turns
    assert result.text == "get_weather returned: 18°C"
    assert result.tool_calls[0].output == "18°C"
    assert done.pending is None
