"""Sub-agent threads in the turn core's fold (pure) and in the turn API (against the fake).

``TurnResult.threads`` holds what each thread did; ``TurnResult.text`` stays the
primary agent's.
"""

from __future__ import annotations

from typing import Any

from fake_dialects import OldWire
from hypothesis import given, settings
from hypothesis import strategies as st

from qoder_async import QoderClient, ThreadResult, UserMessage
from qoder_async._core.convert import structure_event
from qoder_async._core.models import Event
from qoder_async._core.turns import MESSAGE_SEPARATOR, fold, fold_many
from qoder_async.testing import FakeQoderServer, multiagent_script, subagent_tool_script
from qoder_async.types import (
    AgentMessage,
    AgentThreadMessageReceived,
    AgentThreadMessageSent,
    EndTurn,
    PreviewDelta,
    PreviewStart,
    RequiresAction,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionThreadCreated,
    SessionThreadStatusIdle,
    SessionThreadStatusRescheduled,
    SessionThreadStatusRunning,
    SessionThreadStatusTerminated,
    TextBlock,
)

A, B = "sthr_a", "sthr_b"


def two_threads() -> list[Event]:
    """A coordinator delegating to two sub-agents, interleaved."""
    return [
        UserMessage("plan a trip", id="u1", turn_id="t1"),
        SessionStatusRunning(id="r1", turn_id="t1"),
        SessionThreadCreated(id="c1", session_thread_id=A, agent_name="flights"),
        SessionThreadCreated(id="c2", session_thread_id=B, agent_name="hotels"),
        AgentThreadMessageSent(
            id="s1", content=(TextBlock("find flights"),), to_session_thread_id=A
        ),
        SessionThreadStatusRunning(id="ra", session_thread_id=A, agent_name="flights"),
        SessionThreadStatusRunning(id="rb", session_thread_id=B, agent_name="hotels"),
        AgentMessage((TextBlock("AF 123 at 9:00"),), id="ma1", session_thread_id=A),
        AgentMessage((TextBlock("Hotel du Nord"),), id="mb1", session_thread_id=B),
        AgentMessage((TextBlock("or KL 456"),), id="ma2", session_thread_id=A),
        SessionThreadStatusIdle(id="ia", session_thread_id=A, stop_reason=EndTurn()),
        AgentThreadMessageReceived(
            id="x1", content=(TextBlock("AF 123"),), from_session_thread_id=A
        ),
        SessionThreadStatusRescheduled(id="sb", session_thread_id=B),
        AgentMessage((TextBlock("Flights and a hotel are booked."),), id="m1", turn_id="t1"),
        SessionStatusIdle(EndTurn(), id="i1", turn_id="t1"),
    ]


def test_each_thread_gets_its_own_text_and_status() -> None:
    result = fold_many(None, two_threads())
    assert result.text == "Flights and a hotel are booked."
    assert [m.id for m in result.messages] == ["m1"]
    flights, hotels = result.threads
    assert flights == ThreadResult(
        id=A,
        agent_name="flights",
        status="idle",
        stop_reason=EndTurn(),
        text=f"AF 123 at 9:00{MESSAGE_SEPARATOR}or KL 456",
        messages=flights.messages,
        events=flights.events,
    )
    assert [m.id for m in flights.messages] == ["ma1", "ma2"]
    assert [e.id for e in flights.events] == ["c1", "ra", "ma1", "ma2", "ia"]
    assert hotels.agent_name == "hotels"
    assert hotels.text == "Hotel du Nord"
    assert hotels.status == "rescheduling"
    assert hotels.stop_reason is None  # it never went idle
    # The primary's thread messages and what it received belong to the primary.
    assert all(e.id not in ("s1", "x1") for t in result.threads for e in t.events)


def test_a_thread_paused_for_a_tool_then_resumed() -> None:
    events: list[Event] = [
        UserMessage("go", id="u1"),
        SessionThreadCreated(id="c", session_thread_id=A, agent_name="worker"),
        SessionThreadStatusRunning(id="r", session_thread_id=A),
        SessionThreadStatusIdle(id="p", session_thread_id=A, stop_reason=RequiresAction(("use1",))),
        SessionStatusIdle(RequiresAction(("use1",)), id="pause"),
    ]
    paused = fold_many(None, events)
    [worker] = paused.threads
    assert worker.stop_reason == RequiresAction(("use1",))
    assert not paused.ended
    resumed = fold_many(paused, [SessionThreadStatusRunning(id="r2", session_thread_id=A)])
    assert resumed.threads[0].status == "running"
    assert resumed.threads[0].stop_reason is None
    done = fold(resumed, SessionThreadStatusTerminated(id="t", session_thread_id=A))
    assert done.threads[0].status == "terminated"
    assert done.threads[0].agent_name == "worker"
    assert paused.threads[0].status == "idle"  # folds never mutate their input


def test_previews_of_a_thread_are_not_its_text() -> None:
    events: list[Event] = [
        UserMessage("go", id="u1"),
        PreviewStart(id="ma", event_id="ma", event_type="agent.message", session_thread_id=A),
        PreviewDelta(id="ma", event_id="ma", content=TextBlock("draf"), session_thread_id=A),
        AgentMessage((TextBlock("draft done"),), id="ma", session_thread_id=A),
    ]
    result = fold_many(None, events)
    assert result.text == ""
    assert result.threads[0].text == "draft done"
    assert [e.id for e in result.threads[0].events] == ["ma"]


def test_a_single_agent_turn_has_no_threads() -> None:
    result = fold_many(
        None,
        [UserMessage("hi", id="u"), AgentMessage((TextBlock("hello"),), id="m"),
         SessionStatusIdle(EndTurn(), id="i")],
    )  # fmt: skip
    assert result.threads == ()


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=15))
def test_folding_at_once_equals_folding_in_two_parts(cut: int) -> None:
    events = two_threads()
    whole = fold_many(None, events)
    parts = fold_many(fold_many(None, events[:cut]), events[cut:])
    assert parts == whole
    assert parts.threads == whole.threads


# --------------------------------------------------------------------------- the turn API


async def test_turn_threads_with_the_fakes_multiagent_script(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = multiagent_script
    turn = await client.session(session_id).send("the moon")
    result = await turn.result()
    assert result.text == "The researcher reports: Research notes on: the moon"
    [researcher] = result.threads
    [expected] = server.threads(session_id)
    assert researcher.id == expected["id"]
    assert researcher.agent_name == "researcher"
    assert researcher.text == "Research notes on: the moon"
    assert researcher.stop_reason == EndTurn()
    assert researcher.status == "idle"
    stored = [e for e in server.stored_events(session_id) if e.get("session_thread_id")]
    assert [e.id for e in researcher.events] == [e["id"] for e in stored]
    assert turn.threads == result.threads


async def test_a_sub_agents_tool_is_answered_in_its_thread(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = subagent_tool_script("lookup", {"q": "x"})
    seen: list[dict[str, Any]] = []

    async def lookup(args: dict[str, Any]) -> str:
        seen.append(args)
        return "found"

    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    result = await turn.result()
    assert seen == [{"q": "x"}]
    assert result.text == "worker reports: lookup returned: found"
    [worker] = result.threads
    assert worker.text == "lookup returned: found"
    assert worker.stop_reason == EndTurn()
    idles = [e for e in worker.events if isinstance(e, SessionThreadStatusIdle)]
    assert [i.stop_reason.type for i in idles] == ["requires_action", "end_turn"]
    [call] = result.tool_calls
    assert call.session_thread_id == worker.id
    assert call.output == "found"


async def test_thread_folds_survive_wire_dialects(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = multiagent_script
    server.dialect = OldWire(turn_ids=False, string_content=True)
    result = await (await client.session(session_id).send("mars")).result()
    assert result.threads[0].text == "Research notes on: mars"
    # The same fold over the stored history, read through the converter.
    history = [structure_event(e) for e in server.stored_events(session_id)]
    assert fold_many(None, history).threads[0].text == "Research notes on: mars"
