"""CORE (sans-I/O): which events belong to which turn, when a turn ends, and its result.

A session's stream carries every turn of the session (and, on a fresh
connection, its whole history). The :class:`TurnRouter` hands each event to the
turn it belongs to; :func:`fold` folds a turn's events into a :class:`TurnResult`.

Routing, in order (the first rule that applies wins):

====================================================  ==================================
event                                                 goes to
====================================================  ==================================
``session.status_terminated``/``session.deleted``     every live turn (each fails)
its ``id`` is a bound turn's anchor (its user.message)  that turn, which starts here
it has a ``turn_id`` of a bound turn                  that turn
no ``turn_id``, a turn is positionally current        the current turn (servers without
                                                      turn ids, session-level events)
anything else, while a send awaits its answer or for  the backlog (bounded); claimed
a ``turn_id`` not yet known                           when a send's answer binds its turn
otherwise (history replay, other turns, finished)     nobody
====================================================  ==================================

A turn becomes *current* when its anchor is seen (or at once, when the stream
was opened just after the anchor); it stops being current when it ends.

Turn state, driven by the events routed to it:

==============================================================  ==========================
event                                                           turn
==============================================================  ==========================
``session.status_idle`` with ``end_turn``, ``retries_exhausted``,  ends (finished)
``budget_reached``, an unknown reason, or none (older servers)
``session.status_idle`` with ``requires_action``                paused: ``pending`` =
                                                                its ``event_ids``
``session.status_running``                                      running (pause cleared)
``session.status_terminated``, ``session.deleted``              ends (failed)
``session.error`` (``retrying``, ``exhausted``, ``terminal``)    no change: an idle or a
                                                                termination follows
``session.thread_status_idle``                                  no change (a sub-thread)
==============================================================  ==========================
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from attrs import evolve, field, frozen

from ._models import (
    AgentCustomToolUse,
    AgentMCPToolResult,
    AgentMCPToolUse,
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    Event,
    SessionDeleted,
    SessionError,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    SpanModelRequestEnd,
    StopReason,
    Usage,
    UserCustomToolResult,
    UserMessage,
    UserToolConfirmation,
    UserToolResult,
)
from ._stream import MESSAGE_SEPARATOR, PREVIEW_TYPES

__all__ = [
    "DEFAULT_BACKLOG",
    "ToolCall",
    "TurnResult",
    "TurnRouter",
    "TurnState",
    "ends_turn",
    "fold",
    "fold_many",
]

DEFAULT_BACKLOG = 10_000
# Events that change a turn's state or may be the anchor: never taken by the fast path.
_ROUTING_EVENTS = frozenset(
    {SessionStatusIdle, SessionStatusRunning, SessionStatusTerminated, SessionDeleted, UserMessage}
)

ToolUse = AgentToolUse | AgentCustomToolUse | AgentMCPToolUse
ToolOutcome = (
    AgentToolResult
    | AgentMCPToolResult
    | UserCustomToolResult
    | UserToolResult
    | UserToolConfirmation
)


def ends_turn(ev: Event) -> bool:
    """True when ``ev`` ends the turn it belongs to (finished or failed)."""
    # Exact class checks: this runs for every event of every turn.
    cls = type(ev)
    if cls is SessionStatusIdle:
        return ev.stop_reason.ends_turn  # type: ignore[union-attr]
    return cls is SessionStatusTerminated or cls is SessionDeleted


def fails_turn(ev: Event) -> bool:
    """True when ``ev`` ends the turn without it finishing."""
    cls = type(ev)
    return cls is SessionStatusTerminated or cls is SessionDeleted


# --------------------------------------------------------------------------- the fold


@frozen
class ToolCall:
    """A tool use of the turn and, once it arrived, its result."""

    use: ToolUse
    result: ToolOutcome | None = None

    @property
    def id(self) -> str | None:
        """The id results refer to."""
        if isinstance(self.use, AgentToolUse):
            return self.use.tool_use_id
        return self.use.id

    @property
    def name(self) -> str:
        """The tool's name."""
        return self.use.name

    @property
    def input(self) -> Mapping[str, object]:
        """The tool's input."""
        return self.use.input

    @property
    def output(self) -> str | None:
        """The result's text, or None while there is no result."""
        r = self.result
        if r is None or isinstance(r, UserToolConfirmation):
            return None
        return r.text

    @property
    def is_error(self) -> bool:
        """True when the result is an error (or a denied confirmation)."""
        r = self.result
        if isinstance(r, UserToolConfirmation):
            return r.result != "allow"
        return bool(r is not None and r.is_error)


@frozen(kw_only=True)
class TurnResult:
    """What a turn produced, folded from its events.

    ``text`` is the main thread's ``agent.message`` texts joined by a blank line;
    ``messages`` those messages; ``tool_calls`` each tool use with its result;
    ``stop_reason`` the last idle's reason (``None`` while running);
    ``usage`` the sum of the model requests' usage; ``errors`` the
    ``session.error`` events; ``events`` every event in order (no previews).
    """

    turn_id: str | None = None
    events: tuple[Event, ...] = ()
    messages: tuple[AgentMessage, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: StopReason | None = None
    usage: Usage = field(factory=Usage)
    errors: tuple[SessionError, ...] = ()
    ended: bool = False
    failed: bool = False

    @property
    def text(self) -> str:
        """The reply: every main-thread agent.message's text, joined by a blank line."""
        return MESSAGE_SEPARATOR.join(m.text for m in self.messages if m.text)

    @property
    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        """Tool calls a ``requires_action`` pause is waiting for (empty unless paused)."""
        stop = self.stop_reason
        if stop is None or stop.ends_turn:
            return ()
        wanted = set(getattr(stop, "event_ids", ()))
        return tuple(
            c
            for c in self.tool_calls
            if c.result is None and (c.use.id in wanted or c.id in wanted)
        )


def _result_key(ev: ToolOutcome) -> str | None:
    if isinstance(ev, UserCustomToolResult):
        return ev.custom_tool_use_id
    if isinstance(ev, AgentMCPToolResult):
        return ev.mcp_tool_use_id
    return ev.tool_use_id


def fold_many(prev: TurnResult | None, events: Iterable[Event]) -> TurnResult:
    """Fold ``events`` into ``prev`` (or a fresh result). Never mutates its input.

    ``fold_many(None, evs)`` equals folding the events one by one with
    :func:`fold`, in one pass.
    """
    base = prev if prev is not None else TurnResult()
    new_events = list(base.events)
    messages = list(base.messages)
    calls = list(base.tool_calls)
    errors = list(base.errors)
    index = {c.id: i for i, c in enumerate(calls) if c.id is not None}
    index.update({c.use.id: i for i, c in enumerate(calls) if c.use.id is not None})
    stop, usage = base.stop_reason, base.usage
    turn_id, ended, failed = base.turn_id, base.ended, base.failed
    for ev in events:
        if ev.type in PREVIEW_TYPES:
            continue
        new_events.append(ev)
        if turn_id is None and ev.turn_id is not None:
            turn_id = ev.turn_id
        if isinstance(ev, AgentMessage):
            if ev.session_thread_id is None:
                messages.append(ev)
        elif isinstance(ev, AgentToolUse | AgentCustomToolUse | AgentMCPToolUse):
            call = ToolCall(ev)
            calls.append(call)
            for key in {call.id, ev.id}:
                if key is not None:
                    index[key] = len(calls) - 1
        elif isinstance(
            ev,
            AgentToolResult
            | AgentMCPToolResult
            | UserCustomToolResult
            | UserToolResult
            | UserToolConfirmation,
        ):
            key = _result_key(ev)
            i = index.get(key) if key is not None else None
            if i is not None and (
                calls[i].result is None or not isinstance(ev, UserToolConfirmation)
            ):
                calls[i] = evolve(calls[i], result=ev)
        elif isinstance(ev, SpanModelRequestEnd):
            if ev.model_usage is not None:
                usage = usage + ev.model_usage
        elif isinstance(ev, SessionError):
            errors.append(ev)
        elif isinstance(ev, SessionStatusIdle):
            stop = ev.stop_reason
            ended = stop.ends_turn
        elif isinstance(ev, SessionStatusRunning):
            if stop is not None and not stop.ends_turn:
                stop = None
        elif isinstance(ev, SessionStatusTerminated | SessionDeleted):
            ended = failed = True
    return TurnResult(
        turn_id=turn_id,
        events=tuple(new_events),
        messages=tuple(messages),
        tool_calls=tuple(calls),
        stop_reason=stop,
        usage=usage,
        errors=tuple(errors),
        ended=ended,
        failed=failed,
    )


def fold(prev: TurnResult | None, ev: Event) -> TurnResult:
    """``(TurnResult | None, event) -> TurnResult``: one step of the fold, pure."""
    return fold_many(prev, (ev,))


# --------------------------------------------------------------------------- the router

K = TypeVar("K")


class TurnState(Generic[K]):
    """A turn as the router sees it; ``key`` is the caller's handle for it."""

    __slots__ = ("anchor_id", "ended", "key", "pending", "started", "turn_id")

    def __init__(self, key: K, turn_id: str | None, anchor_id: str | None) -> None:
        self.key = key
        self.turn_id = turn_id
        self.anchor_id = anchor_id
        self.started = False
        self.ended = False
        self.pending: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"TurnState(turn_id={self.turn_id!r}, anchor_id={self.anchor_id!r}, "
            f"started={self.started}, ended={self.ended}, pending={self.pending})"
        )


class TurnRouter(Generic[K]):
    """Routes a session's events to its turns (see the module table).

    Usage: :meth:`expect` before posting a send (so events racing the answer are
    kept), :meth:`bind` with the answer's ``turn_id`` and anchor event id (it
    returns the ``(key, event)`` pairs claimed from the backlog), then
    :meth:`route` every event of the stream; it returns the keys to deliver to.
    :attr:`overflowed` becomes True when the backlog had to drop an event while
    a send was unanswered (that turn may then be incomplete).
    """

    __slots__ = (
        "_backlog",
        "_by_turn",
        "_current",
        "_finished",
        "_last_keys",
        "_last_turn",
        "_live",
        "_unstarted",
        "_waiting",
        "overflowed",
    )

    def __init__(self, backlog: int = DEFAULT_BACKLOG) -> None:
        self._backlog: deque[Event] = deque(maxlen=backlog)
        self._by_turn: dict[str, TurnState[K]] = {}
        self._live: list[TurnState[K]] = []
        self._current: TurnState[K] | None = None
        self._finished: deque[str] = deque(maxlen=1024)
        self._waiting = 0
        self._unstarted = 0  # bound turns whose anchor has not been seen
        self._last_turn: str | None = None
        self._last_keys: tuple[K, ...] = ()
        self.overflowed = False

    @property
    def live(self) -> tuple[TurnState[K], ...]:
        """Turns bound and not yet ended."""
        return tuple(self._live)

    @property
    def current(self) -> K | None:
        """The turn positionally in progress (previews belong to it), if any."""
        cur = self._current
        return cur.key if cur is not None and not cur.ended else None

    @property
    def waiting(self) -> int:
        """Sends posted whose answer has not bound a turn yet."""
        return self._waiting

    def expect(self) -> None:
        """A send is about to be posted: keep unclaimed events until it is answered."""
        self._waiting += 1

    def cancel_expect(self) -> None:
        """The expected send failed: it will never bind."""
        self._waiting = max(0, self._waiting - 1)
        if not self._waiting:
            self._backlog.clear()

    def bind(
        self,
        key: K,
        *,
        turn_id: str | None,
        anchor_id: str | None,
        started: bool = False,
        expected: bool = True,
    ) -> list[tuple[K, Event]]:
        """Register a turn from a send's answer; returns backlog events that are its.

        ``started`` says the stream begins right after the anchor (it will not be
        seen), so the turn is current at once.
        """
        if expected:
            self._waiting = max(0, self._waiting - 1)
        state: TurnState[K] = TurnState(key, turn_id, anchor_id)
        self._live.append(state)
        if turn_id is not None:
            self._by_turn[turn_id] = state
        self._unstarted += 1
        if started:
            self._start(state)
            self._current = state
        out: list[tuple[K, Event]] = []
        backlog = list(self._backlog)
        self._backlog.clear()
        for ev in backlog:
            out.extend((key, ev) for key in self.route(ev))
        if not self._waiting:
            self._backlog.clear()
        return out

    def release(self, key: K) -> None:
        """Forget a turn (its consumer left); later events of it go nowhere."""
        for state in self._live:
            if state.key == key:
                self._end(state)
                break

    def route(self, ev: Event) -> tuple[K, ...]:
        """The keys of the turns ``ev`` belongs to (usually one, or none)."""
        cls = type(ev)
        # Fast path: the next event of the turn the previous one went to.
        if ev.turn_id is not None and ev.turn_id == self._last_turn and cls not in _ROUTING_EVENTS:
            return self._last_keys
        if cls is SessionStatusTerminated or cls is SessionDeleted:
            targets = tuple(self._live)
            for state in targets:
                self._end(state)
            if not targets:
                self._keep(ev)
            return tuple(s.key for s in targets)
        target = self._target(ev)
        if target is None:
            self._keep(ev)
            return ()
        if cls is SessionStatusIdle:
            stop = ev.stop_reason  # type: ignore[union-attr]
            if stop.ends_turn:
                self._end(target)
            else:
                target.pending = tuple(getattr(stop, "event_ids", ()))
        elif cls is SessionStatusRunning:
            target.pending = ()
        keys = (target.key,)
        if target.started and not target.ended and ev.turn_id == target.turn_id:
            self._last_turn, self._last_keys = target.turn_id, keys
        return keys

    def _target(self, ev: Event) -> TurnState[K] | None:
        ident = ev.id
        if ident is not None and self._unstarted:
            for state in self._live:
                if not state.started and state.anchor_id == ident:
                    self._start(state)
                    self._current = state
                    return state
        tid = ev.turn_id
        if tid is not None:
            owner = self._by_turn.get(tid)
            if owner is not None and not owner.started:
                self._start(owner)
                if self._current is None or self._current.ended:
                    self._current = owner
            return owner
        current = self._current
        if current is not None and not current.ended:
            return current
        return None

    def _start(self, state: TurnState[K]) -> None:
        state.started = True
        self._unstarted -= 1

    def _keep(self, ev: Event) -> None:
        # Only a send still awaiting its answer can claim an event later; anything
        # else unrouted is history replay, another client's turn or a finished one.
        if not self._waiting or (ev.turn_id is not None and ev.turn_id in self._finished):
            return
        if len(self._backlog) == self._backlog.maxlen:
            self.overflowed = True
        self._backlog.append(ev)

    def _end(self, state: TurnState[K]) -> None:
        if state.ended:
            return
        state.ended = True
        state.pending = ()
        if self._last_turn == state.turn_id:
            self._last_turn, self._last_keys = None, ()
        if not state.started:
            self._unstarted -= 1
        if state in self._live:
            self._live.remove(state)
        if state.turn_id is not None:
            self._by_turn.pop(state.turn_id, None)
            self._finished.append(state.turn_id)
        if self._current is state:
            self._current = None
