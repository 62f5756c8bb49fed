"""CORE (sans-I/O): the stream machine. What is new, where the cursor is, when to give up.

One :class:`StreamMachine` drives one logical event stream across its
connections. The shell (``_shell/eventstream.py``) only moves bytes: it asks the
machine where to resume (:meth:`~StreamMachine.connecting`), hands it every
decoded event (:meth:`~StreamMachine.take`: deliver or drop), lets a timer ask
it whether the connection is dead (:meth:`~StreamMachine.check`) and asks it
what to do when a connection ends (:meth:`~StreamMachine.failed`). The clock
and the random source are injected, so every rule below is a unit test that
takes microseconds.

Delivery and the cursor:

=============================================  =====================================
event                                          effect
=============================================  =====================================
its id was handed out before (this stream or   dropped (``duplicates`` += 1): the
another of the session sharing the `Dedupe`)   window keeps the last ``window`` ids
from the start of a connection, until one      dropped (``stale`` += 1): a replay
event is newer than the floor: ``processed_at``  of what came before the cursor
older than the floor (the newest handed out)
an event newer than the floor                  delivered; replays are over for this
                                               connection (no more time checks)
a preview (``event_start``/``event_delta``)    delivered, never remembered, never moves
                                               the cursor; dropped if its event was
                                               already handed out
any other event                                delivered: its id is remembered *now*
                                               (at hand-out, never at decode), the
                                               cursor and the floor move to it
=============================================  =====================================

Liveness and failures are the tables :data:`LIVENESS_RULES` and
:data:`FAILURE_RULES`, which the code runs (first match wins; a test renders
them here). ``check`` is called by a timer while connected; first the clocks
move: bytes restart the read clock, an event the stall clock (a reconnect does
not), and a session that is not active keeps the stall clock at now.

=============================================  ============================================
while connected (check)                        verdict
=============================================  ============================================
the consumer holds an event                    fine: no clock runs against the stream (both
(``consumer_busy``)                            restart)
*active* (the session runs, or a send awaits   ``STALL``: reconnect
its turn) and no event for ``stall_timeout``:
heartbeats are not progress; a session paused
on ``requires_action`` or idle waits on the
client and is not active
no bytes for ``read_timeout``                  ``READ_TIMEOUT``: reconnect
=============================================  ============================================

``failed`` is called when a connection ends:

=============================================  =============================================
a connection ended (failed)                    decision
=============================================  =============================================
``STALL`` for the ``max_stalls``-th time in a  :class:`StreamStalledError`: an active stream
row (the stall clock restarts on an event,     is silent for at most ``max_stalls`` stall
never on a reconnect)                          timeouts
``STALL``                                      reconnect after ``backoff(0)``
``attempts > max_attempts``, or failing for    :class:`ResumeExhaustedError`
longer than ``max_elapsed``
the connection failed, ended or timed out      reconnect after ``backoff(attempts)``, never
                                               before the server's
                                               ``retry:``/``Retry-After``
=============================================  =============================================

Counting: each failure but a ``STALL`` adds 1 to ``attempts``; ``attempts``
(and the ``max_elapsed`` clock) starts again from 0 when an event arrived on the
failed connection, or when it lived ``healthy_after`` seconds with bytes (or
while not active). ``max_stalls`` counts stalls in a row: an event resets it.

The shell acts on a ``check`` verdict by cancelling the read in the task
reading *now* (each ``anext()`` may run in a task of its own) and takes back
only that cancellation: the caller's own ``cancel()`` of the reader, or
``aclose()`` from another task (which ends the iteration), is never taken for
a timeout. The machine is not told about consumers: ``listen()`` readers that
fall behind are detached by the session (``_turn/session.py``), never waited for
without bound, so a slow consumer cannot hold the stream (and its stall
clock) forever.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from attrs import frozen

from qoder_async._core.backoff import ReconnectPolicy
from qoder_async._core.errors import ResumeExhaustedError, StreamError, StreamStalledError
from qoder_async._core.models import (
    Cursor,
    Event,
    PreviewDelta,
    PreviewStart,
    SessionDeletedEvent,
    SessionStatusIdle,
    SessionStatusRescheduled,
    SessionStatusRunning,
    SessionStatusTerminated,
)
from qoder_async._core.rules import render_table
from qoder_async._core.sse import time_key

__all__ = [
    "DEFAULT_DEDUPE_WINDOW",
    "FAILURE_RULES",
    "LIVENESS_RULES",
    "Cause",
    "Dedupe",
    "Ended",
    "GiveUp",
    "Reconnect",
    "Rule",
    "StreamMachine",
    "rule_tables",
]

DEFAULT_DEDUPE_WINDOW = 1024
_Facts = TypeVar("_Facts")
_Verdict = TypeVar("_Verdict")

# What status events say about the session: True running, False not.
_RUNNING: dict[type, bool] = {
    SessionStatusRunning: True,
    SessionStatusRescheduled: True,
    SessionStatusIdle: False,
    SessionStatusTerminated: False,
    SessionDeletedEvent: False,
}


class Cause(enum.Enum):
    """Why a connection ended."""

    EOF = "the server ended the response"
    ERROR = "the connection failed"
    STATUS = "the server answered with a retryable status"
    READ_TIMEOUT = "no bytes arrived for read_timeout"
    STALL = "no event arrived for stall_timeout while the session was active"


@frozen
class Reconnect:
    """Reconnect after ``delay`` seconds."""

    delay: float


@frozen
class GiveUp:
    """Stop: raise ``error`` (chained to the last failure)."""

    error: StreamError


class Ended(NamedTuple):
    """What :data:`FAILURE_RULES` see of a connection that ended."""

    cause: Cause
    idle: float  # seconds without an event (the stall clock)
    elapsed: float  # seconds failing since the last healthy connection
    server_retry: float | None
    heartbeats: int


@frozen
class Rule(Generic[_Facts, _Verdict]):
    """A row of a decision table: when ``applies``, ``decide``; the docstring shows the text."""

    situation: str
    decision: str
    applies: Callable[[StreamMachine, _Facts], bool]
    decide: Callable[[StreamMachine, _Facts], _Verdict]


class Dedupe:
    """What a session has handed out: a window of recent ids and the ``processed_at`` floor.

    Shared by the successive streams of one session, so a new connection never
    re-delivers what an earlier one handed out. The window is a dict of
    ``str -> None``, which the cyclic GC leaves untracked (a set or deque of ids
    is traversed by every full collection), cut back to the newest ``window``
    ids whenever it doubles: O(1) per event.
    """

    __slots__ = ("_at", "_floor", "limit", "seen", "window")

    def __init__(self, window: int = DEFAULT_DEDUPE_WINDOW) -> None:
        self.window = max(1, window)
        self.limit = 2 * self.window  # trimmed back to ``window`` when it grows past this
        self.seen: dict[str, None] = {}
        self._floor: tuple[int, int] | None = None
        self._at: str | None = None  # newest processed_at handed out, not yet parsed

    def remember(self, ident: str) -> None:
        """Mark ``ident`` as handed out."""
        self.seen[ident] = None
        if len(self.seen) > self.limit:
            self.trim()

    def trim(self) -> None:
        """Cut the window back to its newest ``window`` ids."""
        self.seen = dict.fromkeys(list(self.seen)[-self.window :])

    def advance(self, processed_at: str | None) -> None:
        """Raise the floor to ``processed_at`` (parsed lazily, when the floor is read)."""
        if processed_at is not None:
            self._at = processed_at

    @property
    def floor(self) -> tuple[int, int] | None:
        """The ordering key of the newest ``processed_at`` handed out (or started from)."""
        at, self._at = self._at, None
        key = time_key(at)
        if key is not None and (self._floor is None or key > self._floor):
            self._floor = key
        return self._floor


class StreamMachine:
    """The decisions of one resumable event stream (see the module tables).

    ``cursor`` is where the stream starts (``None``: the server's full history).
    ``clock`` returns seconds (monotonic), ``rand`` a float in [0, 1).
    """

    __slots__ = (
        "_checking",
        "_chunks_at_connect",
        "_clock",
        "_connected_at",
        "_cursor_at",
        "_cursor_id",
        "_dedupe",
        "_events_at_connect",
        "_expecting",
        "_failing_since",
        "_last_bytes",
        "_rand",
        "_running",
        "_seen_chunks",
        "_seen_events",
        "_stall_from",
        "attempts",
        "chunks",
        "connections",
        "consumer_busy",
        "duplicates",
        "events",
        "max_stalls",
        "policy",
        "read_timeout",
        "stale",
        "stall_timeout",
        "stalls",
    )

    def __init__(
        self,
        *,
        cursor: Cursor | None = None,
        policy: ReconnectPolicy | None = None,
        stall_timeout: float | None = None,
        max_stalls: int = 5,
        read_timeout: float | None = None,
        clock: Callable[[], float],
        rand: Callable[[], float],
        dedupe: Dedupe | None = None,
    ) -> None:
        self.policy = policy or ReconnectPolicy()
        self.stall_timeout = stall_timeout
        self.max_stalls = max(1, max_stalls)
        self.read_timeout = read_timeout
        self._clock = clock
        self._rand = rand
        self._dedupe = dedupe if dedupe is not None else Dedupe()
        self._cursor_id: str | None = None
        self._cursor_at: str | None = None
        self._running = False
        self._expecting = False
        self._checking = False
        self._connected_at: float | None = None
        self._failing_since: float | None = None
        now = clock()
        self._last_bytes = now
        self._stall_from = now
        self._seen_chunks = 0
        self._seen_events = 0
        self._events_at_connect = 0
        self._chunks_at_connect = 0
        self.attempts = 0
        self.stalls = 0
        self.chunks = 0
        self.events = 0
        self.connections = 0
        self.duplicates = 0
        self.stale = 0
        self.consumer_busy = False
        self.start(cursor)

    # -- the cursor

    def start(self, cursor: Cursor | None) -> None:
        """Move to ``cursor`` (a new starting point: nothing before it is delivered)."""
        if cursor is None:
            return
        self._cursor_id = cursor.event_id
        self._cursor_at = cursor.processed_at
        self._dedupe.remember(cursor.event_id)
        self._dedupe.advance(cursor.processed_at)

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event handed out (or the starting cursor's)."""
        return self._cursor_id

    @property
    def cursor(self) -> Cursor | None:
        """The last event handed out (or the starting cursor), with its ``processed_at``."""
        if self._cursor_id is None:
            return None
        return Cursor(self._cursor_id, self._cursor_at)

    # -- activity

    @property
    def active(self) -> bool:
        """The session runs, or its owner expects it to (a send awaits its turn)."""
        return self._running or self._expecting

    @property
    def expecting(self) -> bool:
        """Set by the owner while a send awaits the events of its turn."""
        return self._expecting

    @expecting.setter
    def expecting(self, value: bool) -> None:
        if value and not self.active:
            self._stall_from = self._clock()  # the stall clock starts now, not at the last event
        self._expecting = value

    # -- connections

    def connecting(self) -> str | None:
        """A connection is about to be opened: the ``Last-Event-ID`` to send (or None)."""
        self._dedupe.advance(self._cursor_at)
        self._checking = self._dedupe.floor is not None
        return self._cursor_id

    def connected(self) -> None:
        """The connection answered with an event stream."""
        now = self._clock()
        self.connections += 1
        self._connected_at = now
        self._last_bytes = now
        self._events_at_connect = self.events
        self._chunks_at_connect = self.chunks

    # -- events

    def take(self, ev: Event) -> bool:
        """True when ``ev`` is to be handed out now (it is then remembered); False to drop it."""
        cls = type(ev)
        dedupe = self._dedupe
        if cls is PreviewDelta or cls is PreviewStart:
            key = ev.event_id  # type: ignore[union-attr]
            return key is None or key not in dedupe.seen
        ident = ev.id
        seen = dedupe.seen
        if ident is not None and ident in seen:
            self.duplicates += 1
            return False
        if self._checking:
            at = time_key(ev.processed_at)
            floor = dedupe.floor
            if at is not None and floor is not None:
                if at < floor:
                    self.stale += 1
                    return False
                if at > floor:
                    self._checking = False
        if ident is not None:
            # Dedupe.remember, inline: this runs for every event of every stream.
            seen[ident] = None
            if len(seen) > dedupe.limit:
                dedupe.trim()
            self._cursor_id = ident
            self._cursor_at = ev.processed_at
        self.events += 1
        running = _RUNNING.get(cls)
        if running is not None:
            self._running = running
        return True

    # -- liveness

    def check(self) -> Cause | None:
        """Called periodically while connected: ``READ_TIMEOUT``, ``STALL`` or None (fine).

        The clocks move first (bytes restart the read clock, an event the stall clock,
        a session that is not active the stall clock), then :data:`LIVENESS_RULES`
        decide: the first row that applies wins.
        """
        now = self._clock()
        if self.chunks != self._seen_chunks:
            self._seen_chunks = self.chunks
            self._last_bytes = now
        if self.events != self._seen_events:
            self._seen_events = self.events
            self._stall_from = now
            self.stalls = 0
        if not self.active:
            self._stall_from = now
        return next(
            (rule.decide(self, now) for rule in LIVENESS_RULES if rule.applies(self, now)), None
        )

    # -- failures

    def failed(
        self, cause: Cause, *, server_retry: float | None = None, heartbeats: int = 0
    ) -> Reconnect | GiveUp:
        """The connection ended (``cause``): reconnect after a delay, or give up.

        The counters move first (see "Counting" in the module docstring), then
        :data:`FAILURE_RULES` decide: the first row that applies wins.
        """
        now = self._clock()
        policy = self.policy
        lived = now - self._connected_at if self._connected_at is not None else None
        got_bytes = self.chunks != self._chunks_at_connect
        if self.events != self._events_at_connect:
            self._progress(now)
        self._connected_at = None
        idle = now - self._stall_from
        if cause is Cause.STALL:
            self.stalls += 1
            self._stall_from = now
        else:
            if (
                lived is not None
                and lived >= policy.healthy_after
                and (got_bytes or not self.active)
            ):
                # A healthy connection: failures start counting again (the stall clock,
                # though, only restarts on an event).
                self.attempts = 0
                self._failing_since = None
            if self._failing_since is None:
                self._failing_since = now
            self.attempts += 1
        since = self._failing_since
        end = Ended(cause, idle, 0.0 if since is None else now - since, server_retry, heartbeats)
        return next(rule.decide(self, end) for rule in FAILURE_RULES if rule.applies(self, end))

    def _progress(self, now: float) -> None:
        self.attempts = 0
        self._failing_since = None
        self.stalls = 0
        self._stall_from = now


def _hold(m: StreamMachine, now: float) -> None:
    m._last_bytes = m._stall_from = now  # both clocks restart when the consumer lets go


def _stalled(m: StreamMachine, now: float) -> bool:
    return bool(m.active and m.stall_timeout and now - m._stall_from >= m.stall_timeout)


def _no_bytes(m: StreamMachine, now: float) -> bool:
    return bool(m.read_timeout and now - m._last_bytes >= m.read_timeout)


def _exhausted(m: StreamMachine, end: Ended) -> bool:
    policy = m.policy
    return (policy.max_attempts is not None and m.attempts > policy.max_attempts) or (
        policy.max_elapsed is not None and end.elapsed > policy.max_elapsed
    )


def _stalled_error(m: StreamMachine, end: Ended) -> GiveUp:
    return GiveUp(
        StreamStalledError(
            stalls=m.stalls,
            stall_timeout=m.stall_timeout or 0.0,
            idle_seconds=end.idle,
            heartbeats=end.heartbeats,
            last_event_id=m._cursor_id,
        )
    )


def _exhausted_error(m: StreamMachine, end: Ended) -> GiveUp:
    return GiveUp(
        ResumeExhaustedError(
            attempts=m.attempts - 1, elapsed=end.elapsed, last_event_id=m._cursor_id
        )
    )


def _backoff(m: StreamMachine, attempt: int, end: Ended) -> Reconnect:
    return Reconnect(m.policy.backoff.delay(attempt, m._rand(), end.server_retry))


LIVENESS_RULES: tuple[Rule[float, Cause | None], ...] = (
    Rule(
        "the consumer holds an event (``consumer_busy``)",
        "fine: no clock runs against the stream (both restart)",
        lambda m, now: m.consumer_busy,
        _hold,
    ),
    Rule(
        "*active* (the session runs, or a send awaits its turn) and no event for "
        "``stall_timeout``: heartbeats are not progress; a session paused on "
        "``requires_action`` or idle waits on the client and is not active",
        "``STALL``: reconnect",
        _stalled,
        lambda m, now: Cause.STALL,
    ),
    Rule(
        "no bytes for ``read_timeout``",
        "``READ_TIMEOUT``: reconnect",
        _no_bytes,
        lambda m, now: Cause.READ_TIMEOUT,
    ),
)
"""What :meth:`StreamMachine.check` says (the module docstring renders it); first match wins."""

FAILURE_RULES: tuple[Rule[Ended, Reconnect | GiveUp], ...] = (
    Rule(
        "``STALL`` for the ``max_stalls``-th time in a row (the stall clock restarts on an "
        "event, never on a reconnect)",
        ":class:`StreamStalledError`: an active stream is silent for at most "
        "``max_stalls`` stall timeouts",
        lambda m, end: end.cause is Cause.STALL and m.stalls >= m.max_stalls,
        _stalled_error,
    ),
    Rule(
        "``STALL``",
        "reconnect after ``backoff(0)``",
        lambda m, end: end.cause is Cause.STALL,
        lambda m, end: _backoff(m, 0, end),
    ),
    Rule(
        "``attempts > max_attempts``, or failing for longer than ``max_elapsed``",
        ":class:`ResumeExhaustedError`",
        _exhausted,
        _exhausted_error,
    ),
    Rule(
        "the connection failed, ended or timed out",
        "reconnect after ``backoff(attempts)``, never before the server's "
        "``retry:``/``Retry-After``",
        lambda m, end: True,
        lambda m, end: _backoff(m, m.attempts - 1, end),
    ),
)
"""What :meth:`StreamMachine.failed` decides (the module docstring renders it); first match wins."""


def rule_tables() -> tuple[str, str]:
    """The liveness and failure tables of the module docstring, rendered from the rules."""

    def table(rules: tuple[Rule[Any, Any], ...], left: str, right: str) -> str:
        return render_table((left, right), [(r.situation, r.decision) for r in rules], (45, 45))

    return (
        table(LIVENESS_RULES, "while connected (check)", "verdict"),
        table(FAILURE_RULES, "a connection ended (failed)", "decision"),
    )
