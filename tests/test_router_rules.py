"""The turn router's rule tables are data the router runs: one test per row.

Each routing row has a scenario in which it is the first row that applies;
the scenario holds with the table as it is and fails with that row taken out
(so the row, not some other code, decides). Each turn state row likewise.
The module docstring's tables are rendered from the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qoder_async._core import turns
from qoder_async._core.convert import structure_event
from qoder_async._core.models import Event
from qoder_async._core.turns import (
    ROUTING_RULES,
    TURN_STATE_RULES,
    RoutingRule,
    TurnRouter,
    TurnStateRule,
    rule_tables,
)

AT = "2026-05-18T03:40:48.{:06d}000Z"


def ev(kind: str, ident: str | None = None, turn_id: str | None = None, **fields: Any) -> Event:
    data: dict[str, Any] = {"type": kind, **fields}
    if ident is not None:
        data["id"] = ident
    if turn_id is not None:
        data["turn_id"] = turn_id
    return structure_event(data)


def walk(r: TurnRouter[str], event: Event) -> tuple[str, ...]:
    """Route through the table (``route()`` takes fast paths for the common rows)."""
    r._seq += 1
    return r._route(event, r._seq)


def bound(*, turn_id: str | None = None, anchor: str | None = None, **kw: Any) -> TurnRouter[str]:
    r: TurnRouter[str] = TurnRouter()
    r.bind("a", turn_id=turn_id, anchor_id=anchor, expected=False, **kw)
    return r


# --------------------------------------------------------------------------- routing rows


def to_every_live_turn() -> bool:
    r = bound(turn_id="t1", started=True)
    r.bind("b", turn_id="t2", anchor_id="evt_b", expected=False)
    return walk(r, ev("session.status_terminated", "evt_x", "t1")) == ("a", "b")


def to_anchored() -> bool:
    r = bound(anchor="evt_a")
    r.bind("b", turn_id=None, anchor_id=None, expected=False)  # would claim any message
    got = walk(r, ev("user.message", "evt_a", "t1", content=[]))
    return got == ("a",) and r.current == "a" and walk(r, ev("agent.message", "e2", "t1")) == ("a",)


def to_unanchored() -> bool:
    r = bound()
    return walk(r, ev("user.message", "evt_u", content=[])) == ("a",) and r.current == "a"


def to_turn_id() -> bool:
    r = bound(turn_id="t1", anchor="evt_a")  # not started: its echo was not seen
    return walk(r, ev("agent.message", "e1", "t1")) == ("a",)


def to_adopter() -> bool:
    r = bound(started=True)
    first = walk(r, ev("agent.message", "e1", "t9"))
    return first == ("a",) and walk(r, ev("agent.message", "e2", "t9")) == ("a",)


def to_current() -> bool:
    r = bound(turn_id="t1", started=True)
    return walk(r, ev("agent.message", "e1")) == ("a",)


def to_started_by_time() -> bool:
    r = bound(anchor="evt_a", anchor_at=AT.format(1))
    return walk(r, ev("agent.message", "e1", processed_at=AT.format(2))) == ("a",)


def to_backlog() -> bool:
    r: TurnRouter[str] = TurnRouter()
    r.expect()
    early = ev("agent.message", "e1", "t1")
    if walk(r, early) != ():
        return False
    return r.bind("a", turn_id="t1", anchor_id="evt_a") == [("a", early)]


def to_nobody() -> bool:
    r: TurnRouter[str] = TurnRouter()
    early = ev("agent.message", "e1", "t1")
    return walk(r, early) == () and r.bind("a", turn_id="t1", anchor_id="evt_a") == []


ROUTING_SCENARIOS: dict[Any, Callable[[], bool]] = {
    TurnRouter._to_every_live_turn: to_every_live_turn,
    TurnRouter._to_anchored: to_anchored,
    TurnRouter._to_unanchored: to_unanchored,
    TurnRouter._to_turn_id: to_turn_id,
    TurnRouter._to_adopter: to_adopter,
    TurnRouter._to_current: to_current,
    TurnRouter._to_started_by_time: to_started_by_time,
    TurnRouter._to_backlog: to_backlog,
    TurnRouter._to_nobody: to_nobody,
}


def test_every_routing_row_has_a_scenario() -> None:
    assert set(ROUTING_SCENARIOS) == {rule.route for rule in ROUTING_RULES}


@pytest.mark.parametrize("rule", ROUTING_RULES, ids=lambda r: r.route.__name__)
def test_routing_row(rule: RoutingRule, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = ROUTING_SCENARIOS[rule.route]
    assert scenario(), rule.event
    if rule.route is TurnRouter._to_nobody:
        return  # the fallback: without it, nothing is routed either
    monkeypatch.setattr(turns, "ROUTING_RULES", tuple(r for r in ROUTING_RULES if r != rule))
    assert not scenario(), f"without the row {rule.event!r} the outcome is the same"


# --------------------------------------------------------------------------- turn state rows


def _paused(r: TurnRouter[str]) -> TurnRouter[str]:
    action = {"type": "requires_action", "event_ids": ["evt_use"]}
    walk(r, ev("session.status_idle", "e_idle", "t1", stop_reason=action))
    return r


def idle_ends() -> bool:
    r = bound(turn_id="t1", started=True)
    walk(r, ev("session.status_idle", "e1", "t1", stop_reason={"type": "end_turn"}))
    return r.live == () and r.current is None


def idle_pauses() -> bool:
    r = _paused(bound(turn_id="t1", started=True))
    return [s.pending for s in r.live] == [("evt_use",)]


def running_resumes() -> bool:
    r = _paused(bound(turn_id="t1", started=True))
    walk(r, ev("session.status_running", "e2", "t1"))
    return [s.pending for s in r.live] == [()]


def terminated_ends() -> bool:
    r = bound(turn_id="t1", started=True)
    walk(r, ev("session.deleted", "e1"))
    return r.live == ()


def error_changes_nothing() -> bool:
    r = _paused(bound(turn_id="t1", started=True))
    error = {"type": "server_error", "message": "x", "retry_status": {"type": "retrying"}}
    walk(r, ev("session.error", "e2", "t1", error=error))
    return [s.pending for s in r.live] == [("evt_use",)]


def thread_idle_changes_nothing() -> bool:
    r = bound(turn_id="t1", started=True)
    idle = ev(
        "session.thread_status_idle",
        "e1",
        "t1",
        session_thread_id="sthr_1",
        stop_reason={"type": "end_turn"},
    )
    return walk(r, idle) == ("a",) and [s.ended for s in r.live] == [False]


STATE_SCENARIOS: dict[str, Callable[[], bool]] = {
    TURN_STATE_RULES[0].turn: idle_ends,
    TURN_STATE_RULES[1].turn: idle_pauses,
    TURN_STATE_RULES[2].turn: running_resumes,
    TURN_STATE_RULES[3].turn: terminated_ends,
    TURN_STATE_RULES[4].turn: error_changes_nothing,
    TURN_STATE_RULES[5].turn: thread_idle_changes_nothing,
}


def test_every_turn_state_row_has_a_scenario() -> None:
    assert len(STATE_SCENARIOS) == len(TURN_STATE_RULES)


@pytest.mark.parametrize("rule", TURN_STATE_RULES, ids=lambda r: r.turn.split(":")[0])
def test_turn_state_row(rule: TurnStateRule, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = STATE_SCENARIOS[rule.turn]
    assert scenario(), rule.event
    if rule.effect is None:
        return  # a "no change" row: its scenario shows nothing changes
    others = turns._state_index(r for r in TURN_STATE_RULES if r != rule)
    monkeypatch.setattr(turns, "_STATE_RULES", others)
    assert not scenario(), f"without the row {rule.event!r} the turn is the same"


# --------------------------------------------------------------------------- the tables


def test_the_docstring_tables_are_rendered_from_the_rules() -> None:
    routing, state = rule_tables()
    doc = turns.__doc__ or ""
    assert routing in doc
    assert state in doc


def test_the_fast_paths_skip_no_class_a_state_row_acts_on() -> None:
    assert set(turns._STATE_RULES) <= turns._ROUTING_EVENTS


@pytest.mark.parametrize("with_ids", [True, False], ids=["turn_id", "no_turn_id"])
def test_route_with_its_fast_paths_equals_the_table(with_ids: bool) -> None:
    """``route()`` answers the common rows without walking the table: the same answers."""
    tid = "t1" if with_ids else None
    stream = [
        ev("user.message", "evt_a", tid, content=[]),
        *(ev("agent.message", f"e{i}", tid) for i in range(3)),
        ev("session.status_running", "e_run", tid),
        ev("agent.message", "e_other", "t_other"),
        ev("session.status_idle", "e_end", tid, stop_reason={"type": "end_turn"}),
        ev("agent.message", "e_late", tid),
    ]
    fast, slow = bound(anchor="evt_a"), bound(anchor="evt_a")
    assert [fast.route(e) for e in stream] == [walk(slow, e) for e in stream]
