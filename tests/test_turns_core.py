"""The sans-I/O turn core: routing by turn_id (and without), turn end rules, the fold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoder_async import UserMessage
from qoder_async._core.convert import structure_event
from qoder_async._core.models import ErrorInfo, Event
from qoder_async._core.turns import TurnResult, TurnRouter, ends_turn, fold, fold_many
from qoder_async.types import (
    AgentCustomToolUse,
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    BudgetReached,
    EndTurn,
    RequiresAction,
    RetriesExhausted,
    SessionDeletedEvent,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    TextBlock,
    UnknownStopReason,
    Usage,
    UserCustomToolResult,
)

# ----------------------------------------------------------------------------- end rules


@pytest.mark.parametrize(
    ("event", "ends"),
    [
        (SessionStatusIdle(EndTurn()), True),
        (SessionStatusIdle(RetriesExhausted()), True),
        (SessionStatusIdle(BudgetReached()), True),
        (SessionStatusIdle(UnknownStopReason("refusal")), True),
        (SessionStatusIdle(RequiresAction(("e1",))), False),
        (SessionStatusTerminated(), True),
        (SessionDeletedEvent(), True),
        (SessionErrorEvent(ErrorInfo(retry_status="retrying")), False),
        (SessionErrorEvent(ErrorInfo(retry_status="exhausted")), False),
        (SessionStatusRunning(), False),
        (AgentMessage(()), False),
    ],
)
def test_turn_end_rules(event: Event, ends: bool) -> None:
    assert ends_turn(event) is ends


def test_router_pause_and_resume_expose_pending_ids() -> None:
    router: TurnRouter[str] = TurnRouter()
    router.expect()
    router.bind("t", turn_id="turn_1", anchor_id="u1")
    router.route(UserMessage("hi", id="u1", turn_id="turn_1"))
    router.route(SessionStatusIdle(RequiresAction(("c1", "c2")), id="i1", turn_id="turn_1"))
    (state,) = router.live
    assert state.pending == ("c1", "c2")
    router.route(SessionStatusRunning(id="r2", turn_id="turn_1"))
    assert state.pending == ()
    router.route(SessionStatusIdle(EndTurn(), id="i2", turn_id="turn_1"))
    assert router.live == ()


def test_router_termination_fails_every_live_turn() -> None:
    router: TurnRouter[str] = TurnRouter()
    router.bind("a", turn_id="turn_a", anchor_id="ua", started=True, expected=False)
    got = router.route(SessionStatusTerminated(id="x"))
    assert got == ("a",)
    assert router.live == ()


def test_router_ignores_history_and_other_turns() -> None:
    router: TurnRouter[str] = TurnRouter()
    old = [
        UserMessage("old", id="u0", turn_id="turn_0"),
        SessionStatusIdle(EndTurn(), id="i0", turn_id="turn_0"),
    ]
    assert [router.route(ev) for ev in old] == [(), ()]
    router.expect()
    router.bind("mine", turn_id="turn_1", anchor_id="u1")
    assert router.route(AgentMessage((), id="z", turn_id="turn_other")) == ()
    assert router.route(UserMessage("hi", id="u1", turn_id="turn_1")) == ("mine",)


def test_router_backlog_claimed_when_the_answer_arrives_late() -> None:
    router: TurnRouter[str] = TurnRouter()
    router.expect()
    early = [
        UserMessage("hi", id="u1", turn_id="turn_1"),
        SessionStatusRunning(id="r1", turn_id="turn_1"),
    ]
    for ev in early:
        assert router.route(ev) == ()
    claimed = router.bind("t", turn_id="turn_1", anchor_id="u1")
    assert [ev for _, ev in claimed] == early


def test_router_backlog_overflow_is_reported() -> None:
    router: TurnRouter[str] = TurnRouter(backlog=2)
    router.expect()
    for i in range(3):
        router.route(AgentMessage((), id=f"e{i}", turn_id="turn_x"))
    assert router.overflowed


def test_router_without_turn_ids_uses_position() -> None:
    router: TurnRouter[str] = TurnRouter()
    router.expect()
    router.bind("t", turn_id=None, anchor_id="u1")
    assert router.route(AgentMessage((), id="before")) == ()
    assert router.route(UserMessage("hi", id="u1")) == ("t",)
    assert router.route(AgentMessage((), id="m1")) == ("t",)
    assert router.route(SessionStatusIdle(EndTurn(), id="i1")) == ("t",)
    assert router.route(AgentMessage((), id="after")) == ()


# ----------------------------------------------------------------------------- the fold


def _turn_stream() -> list[Event]:
    raw = [
        {"type": "user.message", "id": "u1", "turn_id": "T", "content": "go"},
        {"type": "session.status_running", "id": "r1", "turn_id": "T"},
        {"type": "agent.tool_use", "id": "tu1", "turn_id": "T", "name": "Read", "input": {}},
        {
            "type": "agent.tool_result",
            "id": "tr1",
            "turn_id": "T",
            "tool_use_id": "tu1",
            "content": [{"type": "text", "text": "file"}],
        },
        {"type": "agent.custom_tool_use", "id": "cu1", "turn_id": "T", "name": "calc"},
        {
            "type": "session.status_idle",
            "id": "i1",
            "turn_id": "T",
            "stop_reason": {"type": "requires_action", "event_ids": ["cu1"]},
        },
        {
            "type": "user.custom_tool_result",
            "id": "ur1",
            "turn_id": "T",
            "custom_tool_use_id": "cu1",
            "content": "42",
        },
        {"type": "session.status_running", "id": "r2", "turn_id": "T"},
        {"type": "agent.message", "id": "m1", "turn_id": "T", "content": "The answer"},
        {"type": "agent.message", "id": "m2", "turn_id": "T", "content": "is 42."},
        {
            "type": "agent.message",
            "id": "m3",
            "turn_id": "T",
            "content": "(helper)",
            "session_thread_id": "sthr_1",
        },
        {
            "type": "span.model_request_end",
            "id": "s1",
            "turn_id": "T",
            "model_usage": {"input_tokens": 10, "output_tokens": 5},
        },
        {
            "type": "span.model_request_end",
            "id": "s2",
            "turn_id": "T",
            "model_usage": {"input_tokens": 1, "credits": 0.5},
        },
        {"type": "session.status_idle", "id": "i2", "turn_id": "T"},
    ]
    return [structure_event(d) for d in raw]


def test_fold_collects_text_tools_stop_reason_usage() -> None:
    events = _turn_stream()
    result = fold_many(None, events)
    assert result.turn_id == "T"
    assert result.text == "The answer\n\nis 42."
    assert [m.id for m in result.messages] == ["m1", "m2"]
    assert [(c.name, c.output, c.is_error) for c in result.tool_calls] == [
        ("Read", "file", False),
        ("calc", "42", False),
    ]
    assert isinstance(result.tool_calls[0].use, AgentToolUse)
    assert isinstance(result.tool_calls[0].result, AgentToolResult)
    assert isinstance(result.tool_calls[1].use, AgentCustomToolUse)
    assert isinstance(result.tool_calls[1].result, UserCustomToolResult)
    assert result.stop_reason == EndTurn()
    assert result.usage == Usage(input_tokens=11, output_tokens=5, credits=0.5)
    assert result.ended
    assert not result.failed
    assert result.events == tuple(events)


def test_fold_pending_tool_calls_while_paused() -> None:
    events = _turn_stream()[:6]
    result = fold_many(None, events)
    assert [c.name for c in result.pending_tool_calls] == ["calc"]
    assert not result.ended


def test_fold_marks_termination_failed() -> None:
    result = fold_many(None, [*_turn_stream()[:3], SessionStatusTerminated(id="x", turn_id="T")])
    assert result.ended
    assert result.failed


@settings(max_examples=50)
@given(st.integers(0, 14), st.integers(0, 14))
def test_fold_is_pure_and_stepwise_equals_batch(cut_a: int, cut_b: int) -> None:
    events = _turn_stream()
    step: TurnResult | None = None
    snapshots: list[tuple[TurnResult, TurnResult]] = []
    for ev in events:
        before = step
        step = fold(step, ev)
        if before is not None:
            copy = TurnResult(**{f: getattr(before, f) for f in before.__slots__ if f[0] != "_"})
            snapshots.append((before, copy))
    assert step == fold_many(None, events)
    for before, copy in snapshots:
        assert before == copy  # never mutated by later steps
    lo, hi = sorted((cut_a, cut_b))
    assert fold_many(fold_many(None, events[:lo]), events[lo:]) == step
    assert fold_many(None, events[lo:hi]).events == tuple(events[lo:hi])


def test_fold_ignores_previews() -> None:
    from qoder_async.types import PreviewDelta

    result = fold(None, PreviewDelta(event_id="m", content=TextBlock("x")))
    assert result.events == ()
