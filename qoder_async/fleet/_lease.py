"""CORE (sans-I/O): session leases, fencing tokens, cursors and claim balancing for a fleet.

Many worker processes share sessions; exactly one follows a session at a time.
This module holds the rules, with the clock and the random source injected:
the value types every coordinator speaks, :class:`LeaseTable` (the
coordinator's rules in one process: ``MemoryCoordinator`` wraps it and the
Redis scripts implement the same table), and the worker's side of a lease
(:class:`Lease`), of balancing (:class:`Balancer`) and of an outage
(:class:`OutageBackoff`).

Coordinator rules (one row per operation; "valid (s, T)" is the token check):

======================  ===================================================================
operation               rule
======================  ===================================================================
valid (s, T)            ``T`` is the last token issued for ``s`` and ``s`` was neither
                        released nor handed off since. An expired lease that nobody claimed
                        again is still valid (a renewal revives it). Invalid: LeaseLostError
mark_active(s, a)       ``s`` joins the active line (an active session keeps its place);
                        the cursor becomes ``a`` only if ``s`` has none (a send never moves a
                        cursor); ``a``'s message is *pending* until a commit of its id,
                        unless it is the cursor's own event or one of the last
                        ``RECENT_IDS`` committed ids (identity by id, never by time)
claim(w, ttl, n, max)   the ``n`` oldest active sessions with no live lease go to ``w``, each
                        with token = last token + 1 and a lease of ``ttl``; ``w`` never
                        holds more than ``max``; the claim reports the in-flight record
                        left by the previous owner (to redeliver) and whether a sent
                        message is pending
renew(s, T, ttl)        valid: the lease now ends ``ttl`` from now
begin_handler(s, T, e)  valid: in-flight := (e, T), before the handler starts
commit(s, T, c)         valid: cursor := c, in-flight cleared, the pending message with
                        ``c``'s id dropped, ``c``'s id remembered among the recent ones.
                        Never refused for its ``processed_at``: only the valid holder
                        commits, in stored order (clocks of server writers may disagree)
restore(s, T, w, c, f)  ``s`` has no record, or one with a token below ``T`` (the store lost
                        its data: tokens never go down otherwise): recreate it held by ``w``
                        under ``T``, active, at cursor ``c`` with in-flight ``f``; returns
                        whether it did. A record at ``T`` or above: no change
advance(s, T, c, e)     commit(s, T, c) then begin_handler(s, T, e), as one step (the next
                        event was already received: one round trip covers both)
release(s, T)           valid, nothing pending, nothing in flight: ``s`` leaves the active
                        line and its lease ends; otherwise ``False`` and nothing changes
hand_off(s, T)          valid: the lease ends, ``s`` stays active: claimable at once
claim_tool(s, T, u)     valid: creates ``u`` RUNNING under ``T`` if absent; else unchanged.
                        Run the tool iff the record is RUNNING under your own token
store_tool_result       valid: RUNNING -> DONE(result); DONE and POSTED never change
mark_tool_posted        DONE -> POSTED; no token needed (it records a fact)
announce(w, i, ttl)     ``w``'s record (of process instance ``i``) lives ``ttl``; refused
                        (``False``, no change) while a live record of ``w`` names another
                        instance: one worker id, one process. ``workers()`` lists the live
                        ones with how many sessions each holds
retire(w, i)            deletes ``w``'s record only if it is instance ``i``'s
======================  ===================================================================

Worker rules (:class:`Lease`, one per session held; ``confirmed`` is the time the
last *successful* claim or renewal request was *sent*, not answered):

=======================================  ==============================================
situation                                rule
=======================================  ==============================================
``now - confirmed < ttl``                HELD: a handler may start
``now - confirmed >= ttl``               EXPIRED: no handler may start (a pause, GC or an
                                         outage outlived the lease); renewals go on and a
                                         successful one makes it HELD again
``now >= confirmed + ttl * renew_at``    a renewal is due (default: a third of the ttl)
a renewal, commit or in-flight record    ``restore`` first: if the coordinator had lost
is refused                               the session's record, the call is made again;
                                         otherwise the lease is *refused* (below)
=======================================  ==============================================

What each answer of the coordinator does to the lease (:data:`LEASE_RULES`, the
table :class:`Lease` runs, and :data:`GATES`, the one :meth:`Follow.gate` runs;
this text is ``render_rules()``, checked by a test):

====================  =======================  =========  ======================================
event                 lease was                becomes    and then
====================  =======================  =========  ======================================
renewed               HELD, EXPIRED            HELD       ``confirmed`` := its send time
renewal failed        HELD, EXPIRED            unchanged  retry after a capped, jittered backoff
refused               HELD, EXPIRED, RELEASED  LOST       for good: stop delivering at once
released              HELD, EXPIRED            RELEASED   for good
a handler may start?  HELD                                ``Gate.START``
a handler may start?  EXPIRED                             ``Gate.WAIT``
a handler may start?  LOST                                ``Gate.STOP``
a handler may start?  RELEASED                            ``Gate.STOP``
====================  =======================  =========  ======================================

Following a claimed session (:class:`Follow`, one per claim; the fleet's
driver asks it before every step):

=======================================  ==============================================
situation                                rule
=======================================  ==============================================
the claim's cursor is ``None``           stream the session from its start
the claim's cursor is inclusive (an      the anchor's event is the first to deliver:
anchor: a send's own message)            stream from the event just before it
the claim's cursor is exclusive          stream after it (``Last-Event-ID``)
identity                                 an event is its id and its place in the stored
                                         order, never its ``processed_at`` (server
                                         writers' clocks disagree; sub-agent threads)
the cursor's own event (exclusive), or   skipped: never delivered twice by one owner
an id this follower already delivered
from a connection's start (and a follow  a *replay*: skipped while older than the cursor
from the session's start towards an      (``processed_at``), until an event newer than it
anchor), an event older than the cursor  or the cursor's own event arrives; from then on
                                         every event of that connection is delivered,
                                         older timestamps included (as the stream does)
the claim names an in-flight event       that event is delivered with
                                         ``redelivered=True``; every other is a first
                                         delivery
before a handler (and again right        ``Gate.START`` while HELD; ``Gate.WAIT`` while
before it starts)                        EXPIRED (wait for a renewal); ``Gate.STOP``
                                         once LOST or RELEASED
the handler returned, or raised          commit the event's cursor (``ends_turn`` when
(``asyncio.CancelledError`` included,    it ended a turn); if the next event is already
unless the fleet cancelled it: a lost    here (``next_after``), ``advance`` instead. A
lease, shutdown)                         raising handler is a handler failure, counted
                                         as delivered, never a crash of the follower;
                                         the fleet's own cancellation leaves the event
                                         in flight (the next owner redelivers it)
the committed (or claimed) cursor ends   try to release (not when the claim said a
a turn                                   message is pending); refused (a message is
                                         pending or a handler in flight): keep following
a tool-ledger record (``tool_action``)   RUNNING under our token: RUN it; DONE: POST
                                         the stored result; POSTED: SKIP; RUNNING under
                                         an older token: ORPHANED (its owner died
                                         mid-run: never run again, post an error)
=======================================  ==============================================

Balancing (:class:`Balancer`): claimable sessions are shared out one by one to
the live worker with the fewest sessions (ties by worker id) that still has
room under its ``max_sessions``; a worker claims only its own share, so new
work goes to the least loaded. When its share stays zero while work waits for
``patience`` rounds (a peer that should take it does not), it claims one
session a round anyway.

Time order: ``processed_at`` (RFC 3339, read by :func:`order_key` with the
stream's own parser ``_stream.time_key``) only ever tells a replay at the start
of a connection from new events; it never orders commits and never decides
whether a sent message was delivered (ids do).
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from attrs import define, field, frozen

from qoder_async._core.backoff import Backoff
from qoder_async._core.errors import ConfigurationError, LeaseLostError
from qoder_async._core.models import Cursor
from qoder_async._core.rules import render_table
from qoder_async._core.sse import time_key

__all__ = [
    "GATES",
    "LEASE_RULES",
    "RECENT_IDS",
    "Balancer",
    "Claim",
    "FleetCursor",
    "Follow",
    "Gate",
    "InFlight",
    "Lease",
    "LeaseEvent",
    "LeaseRule",
    "LeaseStatus",
    "LeaseTable",
    "OutageBackoff",
    "SessionInfo",
    "ToolAction",
    "ToolRecord",
    "ToolState",
    "WorkerLoad",
    "covers",
    "fair_shares",
    "order_key",
    "render_rules",
    "tool_action",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RECENT_IDS = 256
"""How many committed event ids a coordinator remembers per session (so a send
whose message a follower committed before the sender marked it is not pending)."""
_ORDER_KEYS: dict[str, str | None] = {}


def order_key(processed_at: str | None) -> str | None:
    """A string that sorts like the instant ``processed_at`` names, or ``None``.

    The timestamp is read by :func:`qoder_async._core.sse.time_key`, the parser
    the stream's replay floor uses (RFC 3339, any offset, any precision, a
    missing offset read as UTC), so the coordinator and the stream agree on
    what is older. The instant becomes a fixed-width UTC digit string
    (``YYYYMMDDhhmmssnnnnnnnnn``), so plain string comparison (in Python or in
    a Redis Lua script) orders them. Anything unparseable, or outside the
    years 1-9999 once in UTC, has no order (``None``).
    """
    if processed_at is None:
        return None
    if processed_at in _ORDER_KEYS:
        return _ORDER_KEYS[processed_at]
    key = time_key(processed_at)
    found: str | None = None
    if key is not None:
        seconds, nanos = key
        try:
            instant = _EPOCH + timedelta(seconds=seconds)
        except OverflowError:
            pass
        else:
            found = f"{instant.year:04d}{instant:%m%d%H%M%S}{nanos:09d}"
    if len(_ORDER_KEYS) >= 4096:  # each event's key is asked for a few times in a row
        _ORDER_KEYS.clear()
    _ORDER_KEYS[processed_at] = found
    return found


@frozen
class FleetCursor(Cursor):
    """Where delivery of a session stands: a :class:`~qoder_async.Cursor` and two flags.

    A subclass of the public cursor (``event_id``, ``processed_at``), so an
    exclusive one (``inclusive=False``) can be passed as is to
    ``client.sessions.events.stream(session_id, last_event_id=cursor)``.

    ``inclusive=False`` (a committed cursor): everything up to and including
    ``event_id`` was delivered. ``inclusive=True`` (the anchor a send sets): the
    event ``event_id`` itself (the send's own ``user.message``) is the first one
    still to deliver. ``processed_at`` is the RFC 3339 string as the API sent it,
    or ``None``; it orders cursors and lets the stream drop replays older than
    the cursor. ``ends_turn=True`` says the event at ``event_id`` ended a turn
    (the session went idle after it): a worker that claims a session whose
    cursor ends a turn, with nothing pending, may release it without waiting
    for more events.
    """

    inclusive: bool = False
    ends_turn: bool = False

    def __attrs_post_init__(self) -> None:
        if self.inclusive and self.ends_turn:
            raise ValueError("an inclusive cursor (an anchor) cannot end a turn")

    @property
    def order_key(self) -> str | None:
        """:func:`order_key` of ``processed_at``."""
        return order_key(self.processed_at)


def covers(cursor: FleetCursor | None, event_id: str) -> bool:
    """Whether ``cursor`` says its own event ``event_id`` was delivered (by id only)."""
    return cursor is not None and cursor.event_id == event_id and not cursor.inclusive


@frozen
class InFlight:
    """A handler that was started for ``event_id`` under fencing token ``token`` and
    not yet committed. Found by the next owner, it means: deliver ``event_id``
    again, with ``redelivered=True``."""

    event_id: str
    token: int


@frozen
class Claim:
    """A session just claimed: follow it from ``cursor`` under fencing ``token``.

    ``cursor`` is ``None`` when nothing was ever committed or anchored (deliver
    from the start of the session). ``inflight`` is the record a previous owner
    left: that event's handler may have run, so it is delivered again with
    ``redelivered=True``; every other event after the cursor is a first delivery.
    ``pending`` says whether a sent message is still undelivered (a claimed
    session whose cursor ended a turn is then not worth trying to release).
    """

    session_id: str
    token: int
    cursor: FleetCursor | None
    inflight: InFlight | None = None
    pending: bool = False


class ToolState(enum.Enum):
    """Where a custom tool call stands in the fleet-wide ledger."""

    RUNNING = "running"
    """Claimed by the owner with ``token``; it runs (or ran) the tool; no result yet."""
    DONE = "done"
    """The result is stored; it still has to be posted."""
    POSTED = "posted"
    """The result was posted to the session."""


@frozen
class ToolRecord:
    """The ledger entry of one custom tool call (keyed by its tool use id).

    ``token`` is the fencing token of the claim that may run it; ``result`` the
    stored result (opaque text the fleet serialises), ``None`` while RUNNING.
    """

    tool_use_id: str
    state: ToolState
    token: int
    result: str | None = None

    def may_run(self, token: int) -> bool:
        """Whether the holder of ``token`` is the one to run the tool (at most once).

        True only for the claim made under ``token`` while no result is stored.
        A RUNNING record under another token was claimed by an owner that died:
        its outcome is unknown and the tool must not run again.
        """
        return self.state is ToolState.RUNNING and self.token == token


@frozen
class WorkerLoad:
    """A live worker and how many sessions it holds (for balancing)."""

    worker_id: str
    sessions: int
    max_sessions: int | None = None

    @property
    def room(self) -> int | None:
        """How many more sessions it may take (``None``: no limit)."""
        if self.max_sessions is None:
            return None
        return max(0, self.max_sessions - self.sessions)


@frozen
class SessionInfo:
    """What a coordinator knows about one session (diagnostics and tests).

    ``holder`` is the worker whose token is valid ("" when none); ``leased``
    whether that lease has not expired; ``token`` the last token issued;
    ``pending`` the ids of sent messages no commit covers yet.
    """

    session_id: str
    active: bool
    holder: str
    leased: bool
    token: int
    cursor: FleetCursor | None
    inflight: InFlight | None
    pending: tuple[str, ...]


# --------------------------------------------------------------------------- the table


@define
class _Row:
    token: int = 0
    holder: str = ""
    lease_until: float | None = None
    cursor: FleetCursor | None = None
    inflight: InFlight | None = None
    pending: set[str] = field(factory=set)
    line: int | None = None  # place in the active line; None = inactive
    recent: deque[str] = field(factory=lambda: deque(maxlen=RECENT_IDS))  # committed ids


def _done(row: _Row, event_id: str) -> bool:
    return covers(row.cursor, event_id) or event_id in row.recent


@define
class _Worker:
    until: float
    max_sessions: int | None
    instance: str = ""


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")


class LeaseTable:
    """The coordinator's rules (see the module docstring) over one process's memory.

    Synchronous and sans-I/O: ``clock`` (seconds, monotonic) is injected, so a
    test moves time by hand. ``ledger_ttl`` is how long tool-ledger records are
    kept after their last change.
    """

    def __init__(self, *, clock: Callable[[], float], ledger_ttl: float = 7 * 86400.0) -> None:
        self._clock = clock
        self._ledger_ttl = ledger_ttl
        self._rows: dict[str, _Row] = {}
        self._workers: dict[str, _Worker] = {}
        self._held: dict[str, set[str]] = {}
        self._tools: dict[tuple[str, str], tuple[ToolRecord, float]] = {}
        self._line = 0

    # ------------------------------------------------------------ helpers

    def _valid(self, session_id: str, token: int) -> _Row:
        row = self._rows.get(session_id)
        if row is None or row.holder == "" or row.token != token:
            raise LeaseLostError(session_id, token)
        return row

    def _leased(self, row: _Row) -> bool:
        return row.lease_until is not None and self._clock() < row.lease_until

    def _held_by(self, worker_id: str) -> int:
        return len(self._held.get(worker_id, ()))

    def _hold(self, session_id: str, row: _Row, worker_id: str, ttl: float) -> None:
        """``worker_id`` holds ``session_id`` for ``ttl`` seconds (``_held`` names exactly
        the sessions each worker holds)."""
        self._drop_lease(session_id, row)
        row.holder = worker_id
        row.lease_until = self._clock() + ttl
        self._held.setdefault(worker_id, set()).add(session_id)

    def _drop_lease(self, session_id: str, row: _Row) -> None:
        self._held.get(row.holder, set()).discard(session_id)
        row.holder = ""
        row.lease_until = None

    def _activate(self, row: _Row) -> None:
        """Put ``row`` at the end of the active line, unless it is in it."""
        if row.line is None:
            self._line += 1
            row.line = self._line

    # ------------------------------------------------------------ sessions

    def mark_active(self, session_id: str, anchor: FleetCursor | None = None) -> None:
        """Put ``session_id`` in the active line; ``anchor`` sets the cursor only if absent."""
        row = self._rows.setdefault(session_id, _Row())
        if anchor is not None:
            if row.cursor is None:
                row.cursor = anchor
            if not _done(row, anchor.event_id):
                row.pending.add(anchor.event_id)
        self._activate(row)

    def claimable(self, limit: int | None = None) -> list[str]:
        """Active sessions with no live lease, oldest activation first."""
        ready = sorted(
            (row.line, sid)
            for sid, row in self._rows.items()
            if row.line is not None and not self._leased(row)
        )
        ids = [sid for _, sid in ready]
        return ids if limit is None else ids[:limit]

    def claim(
        self, worker_id: str, *, ttl: float, limit: int = 1, max_sessions: int | None = None
    ) -> list[Claim]:
        """Claim up to ``limit`` claimable sessions for ``worker_id`` (see the rules)."""
        _check_ttl(ttl)
        room = limit
        if max_sessions is not None:
            room = min(room, max_sessions - self._held_by(worker_id))
        if room <= 0:
            return []
        claims = []
        for sid in self.claimable(room):
            row = self._rows[sid]
            row.token += 1
            self._hold(sid, row, worker_id, ttl)
            claims.append(Claim(sid, row.token, row.cursor, row.inflight, bool(row.pending)))
        return claims

    def renew(self, session_id: str, token: int, *, ttl: float) -> None:
        """Extend (or revive) the lease: it now ends ``ttl`` from now."""
        _check_ttl(ttl)
        row = self._valid(session_id, token)
        row.lease_until = self._clock() + ttl

    def renew_many(self, tokens: Mapping[str, int], *, ttl: float) -> set[str]:
        """Renew each ``session_id -> token``; the ids whose lease is lost."""
        lost = set()
        for sid, token in tokens.items():
            try:
                self.renew(sid, token, ttl=ttl)
            except LeaseLostError:
                lost.add(sid)
        return lost

    def begin_handler(self, session_id: str, token: int, event_id: str) -> None:
        """Record that the handler for ``event_id`` is starting under ``token``."""
        row = self._valid(session_id, token)
        row.inflight = InFlight(event_id, token)

    def commit(self, session_id: str, token: int, cursor: FleetCursor) -> bool:
        """Store ``cursor`` (never refused for its time); always ``True``."""
        if cursor.inclusive:
            raise ValueError("a committed cursor is never inclusive")
        row = self._valid(session_id, token)
        row.cursor = cursor
        row.inflight = None
        row.pending.discard(cursor.event_id)
        row.recent.append(cursor.event_id)
        return True

    def restore(
        self,
        session_id: str,
        token: int,
        worker_id: str,
        *,
        ttl: float,
        cursor: FleetCursor | None,
        inflight: InFlight | None = None,
    ) -> bool:
        """Recreate a record the store lost (see the rules); whether it did."""
        _check_ttl(ttl)
        row = self._rows.get(session_id)
        if row is not None and row.token >= token:
            return False
        if row is None:
            row = self._rows[session_id] = _Row()
        row.token, row.cursor, row.inflight = token, cursor, inflight
        self._hold(session_id, row, worker_id, ttl)
        self._activate(row)
        return True

    def advance(self, session_id: str, token: int, cursor: FleetCursor, next_event_id: str) -> bool:
        """:meth:`commit` ``cursor``, then :meth:`begin_handler` ``next_event_id``, at once.

        Returns what the commit returned; the in-flight record is made either way.
        """
        stored = self.commit(session_id, token, cursor)
        self.begin_handler(session_id, token, next_event_id)
        return stored

    def release(self, session_id: str, token: int) -> bool:
        """End the lease and leave the active line, if nothing is pending or in flight."""
        row = self._valid(session_id, token)
        if row.pending or row.inflight is not None:
            return False
        self._drop_lease(session_id, row)
        row.line = None
        return True

    def hand_off(self, session_id: str, token: int) -> None:
        """End the lease; the session stays active, claimable at once."""
        row = self._valid(session_id, token)
        self._drop_lease(session_id, row)

    def inspect(self, session_id: str) -> SessionInfo | None:
        """A snapshot of what is known about ``session_id``, or ``None``."""
        row = self._rows.get(session_id)
        if row is None:
            return None
        return SessionInfo(
            session_id=session_id,
            active=row.line is not None,
            holder=row.holder,
            leased=bool(row.holder) and self._leased(row),
            token=row.token,
            cursor=row.cursor,
            inflight=row.inflight,
            pending=tuple(sorted(row.pending)),
        )

    # ------------------------------------------------------------ tool ledger

    def _tool(self, session_id: str, tool_use_id: str) -> ToolRecord | None:
        entry = self._tools.get((session_id, tool_use_id))
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._tools[(session_id, tool_use_id)]
            return None
        return entry[0]

    def _put_tool(self, session_id: str, record: ToolRecord) -> ToolRecord:
        until = self._clock() + self._ledger_ttl
        self._tools[(session_id, record.tool_use_id)] = (record, until)
        return record

    def claim_tool(self, session_id: str, token: int, tool_use_id: str) -> ToolRecord:
        """The ledger record of ``tool_use_id``, created RUNNING under ``token`` if absent."""
        self._valid(session_id, token)
        record = self._tool(session_id, tool_use_id)
        if record is None:
            record = self._put_tool(session_id, ToolRecord(tool_use_id, ToolState.RUNNING, token))
        return record

    def store_tool_result(
        self, session_id: str, token: int, tool_use_id: str, result: str
    ) -> ToolRecord:
        """Store the result (RUNNING -> DONE); the first stored result wins."""
        self._valid(session_id, token)
        record = self._tool(session_id, tool_use_id)
        if record is None or record.state is ToolState.RUNNING:
            claimed = token if record is None else record.token
            record = ToolRecord(tool_use_id, ToolState.DONE, claimed, result)
            self._put_tool(session_id, record)
        return record

    def mark_tool_posted(self, session_id: str, tool_use_id: str) -> None:
        """DONE -> POSTED (anything else is left as it is)."""
        record = self._tool(session_id, tool_use_id)
        if record is not None and record.state is ToolState.DONE:
            posted = ToolRecord(tool_use_id, ToolState.POSTED, record.token, record.result)
            self._put_tool(session_id, posted)

    def tool_record(self, session_id: str, tool_use_id: str) -> ToolRecord | None:
        """The ledger record of ``tool_use_id``, or ``None``."""
        return self._tool(session_id, tool_use_id)

    # ------------------------------------------------------------ workers

    def announce(
        self,
        worker_id: str,
        *,
        ttl: float,
        max_sessions: int | None = None,
        instance: str = "",
    ) -> bool:
        """Register (or keep alive) ``worker_id`` for ``ttl`` seconds; ``False`` (and no
        change) while a live record of ``worker_id`` names another ``instance``."""
        _check_ttl(ttl)
        now = self._clock()
        rec = self._workers.get(worker_id)
        if rec is not None and now < rec.until and rec.instance != instance:
            return False
        self._workers[worker_id] = _Worker(now + ttl, max_sessions, instance)
        return True

    def retire(self, worker_id: str, instance: str = "") -> None:
        """Forget ``worker_id``'s record if it is ``instance``'s (a live twin's stays)."""
        rec = self._workers.get(worker_id)
        if rec is not None and rec.instance == instance:
            del self._workers[worker_id]

    def workers(self) -> list[WorkerLoad]:
        """Live workers with the number of sessions each holds, by worker id."""
        now = self._clock()
        for wid in [w for w, rec in self._workers.items() if now >= rec.until]:
            del self._workers[wid]
        return [
            WorkerLoad(wid, self._held_by(wid), rec.max_sessions)
            for wid, rec in sorted(self._workers.items())
        ]


# --------------------------------------------------------------------------- worker side


class LeaseStatus(enum.Enum):
    """The worker's belief about one lease (see the module docstring's rules)."""

    HELD = "held"
    EXPIRED = "expired"
    LOST = "lost"
    RELEASED = "released"


class LeaseEvent(enum.Enum):
    """What the coordinator answered about a lease (the rows of :data:`LEASE_RULES`)."""

    RENEWED = "renewed"
    """A renewal succeeded."""
    RENEWAL_FAILED = "renewal failed"
    """A renewal got no answer (the coordinator is down)."""
    REFUSED = "refused"
    """A renewal, commit or in-flight record was refused (and ``restore`` did not help)."""
    RELEASED = "released"
    """The lease was released or handed off."""


class LeaseRule(NamedTuple):
    """One row of :data:`LEASE_RULES`: on ``event``, a lease in one of ``before``
    becomes ``after`` (``None``: stays as it is); ``then`` says what else happens."""

    event: LeaseEvent
    before: frozenset[LeaseStatus]
    after: LeaseStatus | None
    then: str


_LIVE = frozenset({LeaseStatus.HELD, LeaseStatus.EXPIRED})
LEASE_RULES: tuple[LeaseRule, ...] = (
    LeaseRule(
        LeaseEvent.RENEWED,
        _LIVE,
        LeaseStatus.HELD,
        "``confirmed`` := its send time",
    ),
    LeaseRule(
        LeaseEvent.RENEWAL_FAILED,
        _LIVE,
        None,
        "retry after a capped, jittered backoff",
    ),
    LeaseRule(
        LeaseEvent.REFUSED,
        _LIVE | {LeaseStatus.RELEASED},
        LeaseStatus.LOST,
        "for good: stop delivering at once",
    ),
    LeaseRule(LeaseEvent.RELEASED, _LIVE, LeaseStatus.RELEASED, "for good"),
)
"""How a :class:`Lease` answers the coordinator, first matching row wins; an
event no row names for the lease's status changes nothing (LOST and RELEASED
are final but for a refusal, which makes a released lease LOST)."""


def render_rules() -> str:
    """:data:`LEASE_RULES` and :data:`GATES` as the module docstring's table shows them."""
    rows = [
        (
            f"{rule.event.value}",
            ", ".join(s.name for s in LeaseStatus if s in rule.before),
            "unchanged" if rule.after is None else rule.after.name,
            rule.then,
        )
        for rule in LEASE_RULES
    ]
    rows += [
        ("a handler may start?", status.name, "", f"``Gate.{gate.name}``")
        for status, gate in GATES.items()
    ]
    return render_table(("event", "lease was", "becomes", "and then"), rows)


class Lease:
    """One session's lease as the worker holding it sees it (sans-I/O).

    Create it with the time the claim request was *sent* (``claimed_at``): the
    coordinator started the lease after that, so the local deadline is never
    later than the coordinator's. Around each renewal call::

        sent_at = lease.renewal_started()
        try:
            await coordinator.renew(sid, lease.token, ttl=lease.ttl)
        except LeaseLostError:
            lease.lost()
        except CoordinatorUnavailableError:
            lease.renewal_failed(sent_at)
        else:
            lease.renewed(sent_at)

    and before each handler: ``if not lease.may_start_handler(): stop``. The
    ``clock`` must be monotonic (``time.monotonic``).
    """

    __slots__ = (
        "_clock",
        "_confirmed",
        "_outage",
        "_outstanding",
        "_retry_at",
        "_status",
        "renew_at",
        "session_id",
        "token",
        "ttl",
    )

    def __init__(
        self,
        session_id: str,
        token: int,
        *,
        ttl: float,
        claimed_at: float,
        clock: Callable[[], float],
        rand: Callable[[], float],
        renew_at: float = 1 / 3,
        backoff: Backoff | None = None,
    ) -> None:
        _check_ttl(ttl)
        if not 0 < renew_at < 1:
            raise ValueError(f"renew_at is a fraction of the ttl in (0, 1), got {renew_at!r}")
        self.session_id = session_id
        self.token = token
        self.ttl = ttl
        self.renew_at = renew_at
        self._clock = clock
        backoff = backoff or Backoff(initial=ttl / 20, maximum=ttl * renew_at)
        self._outage = OutageBackoff(backoff, clock=clock, rand=rand)
        self._confirmed = claimed_at
        self._retry_at: float | None = None
        self._outstanding = False
        self._status = LeaseStatus.HELD

    @property
    def confirmed_at(self) -> float:
        """When the last successful claim or renewal request was sent."""
        return self._confirmed

    @property
    def deadline(self) -> float:
        """No handler may start at or after this time (unless a renewal succeeds first)."""
        return self._confirmed + self.ttl

    @property
    def status(self) -> LeaseStatus:
        """HELD, EXPIRED (locally, for now), LOST or RELEASED (both final)."""
        if self._status is LeaseStatus.HELD and self._clock() >= self.deadline:
            return LeaseStatus.EXPIRED
        return self._status

    @property
    def failures(self) -> int:
        """Renewals in a row that got no answer from the coordinator."""
        return self._outage.attempts

    def may_start_handler(self) -> bool:
        """Whether a handler may start now (:data:`GATES`: held, its deadline not reached)."""
        return GATES[self.status] is Gate.START

    @property
    def done(self) -> bool:
        """LOST or RELEASED: nothing more will happen on this lease."""
        return self._status in (LeaseStatus.LOST, LeaseStatus.RELEASED)

    def next_renewal_at(self) -> float:
        """When the next renewal should be sent (``inf`` when none: done or one outstanding)."""
        if self.done or self._outstanding:
            return float("inf")
        if self._retry_at is not None:
            return self._retry_at
        return self._confirmed + self.ttl * self.renew_at

    def renewal_due(self) -> bool:
        """Whether a renewal should be sent now."""
        return self._clock() >= self.next_renewal_at()

    def renewal_started(self) -> float:
        """A renewal request is being sent now; returns its send time for the answer."""
        self._outstanding = True
        return self._clock()

    def _on(self, event: LeaseEvent) -> bool:
        """Apply :data:`LEASE_RULES` to ``event``; whether a row matched."""
        self._outstanding = False
        status = self.status
        for rule in LEASE_RULES:
            if rule.event is event and status in rule.before:
                if rule.after is not None:
                    self._status = rule.after
                return True
        return False

    def renewed(self, sent_at: float) -> None:
        """The renewal sent at ``sent_at`` succeeded."""
        if self._on(LeaseEvent.RENEWED):
            self._confirmed = max(self._confirmed, sent_at)
            self._outage.recovered()
            self._retry_at = None

    def renewal_failed(self, sent_at: float) -> float:
        """The renewal sent at ``sent_at`` got no answer; the delay before retrying."""
        self._on(LeaseEvent.RENEWAL_FAILED)
        delay = self._outage.failed()
        self._retry_at = self._clock() + delay
        return delay

    def lost(self) -> None:
        """The coordinator refused the token: stop delivering, for good."""
        self._on(LeaseEvent.REFUSED)

    def released(self) -> None:
        """The lease was released or handed off: nothing more to do, for good."""
        self._on(LeaseEvent.RELEASED)


class Gate(enum.Enum):
    """Whether a handler may start now on a followed session (:meth:`Follow.gate`)."""

    START = "start"
    """The lease is held and its deadline not reached: start the handler."""
    WAIT = "wait"
    """The lease ran out locally (a pause, an outage): start nothing until a renewal
    confirms it again, or it is lost."""
    STOP = "stop"
    """The lease is lost or released: stop delivering this session at once."""


GATES = {
    LeaseStatus.HELD: Gate.START,
    LeaseStatus.EXPIRED: Gate.WAIT,
    LeaseStatus.LOST: Gate.STOP,
    LeaseStatus.RELEASED: Gate.STOP,
}
"""Whether a handler may start, by the lease's status (:meth:`Follow.gate`)."""


class Follow:
    """One claimed session as the worker following it decides (see the module's table).

    Sans-I/O: the driver opens the stream where :attr:`anchor` or
    :attr:`resume_cursor` says, asks :meth:`admit` about each event, waits on
    :meth:`gate` before each handler, commits :meth:`delivered`'s cursor once the
    handler returned, reports it with :meth:`committed`, and releases when
    :meth:`may_release` says so.
    """

    __slots__ = ("_floor", "_inflight", "_pending", "_replaying", "_seen", "cursor", "lease")

    def __init__(self, claim: Claim, lease: Lease) -> None:
        if (claim.session_id, claim.token) != (lease.session_id, lease.token):
            raise ValueError("the lease must be the claim's")
        self.lease = lease
        self.cursor = claim.cursor
        self._inflight = claim.inflight.event_id if claim.inflight is not None else None
        self._pending = claim.pending  # as claimed; commits may cover it later
        self._seen: dict[str, None] = {}  # ids delivered by this follower (the last RECENT_IDS)
        self._replaying = False
        self._floor: str | None = None

    def __repr__(self) -> str:
        return f"<Follow {self.session_id} token={self.token} at {self.cursor}>"

    @property
    def session_id(self) -> str:
        """The session followed."""
        return self.lease.session_id

    @property
    def token(self) -> int:
        """The fencing token of the claim."""
        return self.lease.token

    @property
    def anchor(self) -> FleetCursor | None:
        """The inclusive cursor (a send's message, the first event to deliver), else None."""
        cursor = self.cursor
        return cursor if cursor is not None and cursor.inclusive else None

    @property
    def resume_cursor(self) -> FleetCursor | None:
        """The exclusive cursor to stream after, else None (see :attr:`anchor`)."""
        cursor = self.cursor
        return cursor if cursor is not None and not cursor.inclusive else None

    def connecting(self) -> None:
        """A connection is about to open: what arrives first may replay older events."""
        cursor = self.cursor
        self._floor = cursor.order_key if cursor is not None else None
        self._replaying = self._floor is not None

    def _new(self, event_id: str | None, key: str | None) -> bool:
        if event_id:
            if self.known(event_id):
                return False
            cursor = self.cursor
            if cursor is not None and cursor.event_id == event_id:
                return True  # the anchor: the first event to deliver
        floor = self._floor
        return not (self._replaying and key is not None and floor is not None and key < floor)

    def known(self, event_id: str) -> bool:
        """Whether this follower delivered ``event_id`` already (or the cursor is on it)."""
        return event_id in self._seen or covers(self.cursor, event_id)

    def admit(self, event_id: str | None, processed_at: str | None) -> bool:
        """Whether an event is still to deliver (see the table: by id, and replays)."""
        key = order_key(processed_at)
        new = self._new(event_id, key)
        if self._replaying and new:
            cursor = self.cursor
            floor = self._floor
            if (cursor is not None and event_id == cursor.event_id) or (
                key is not None and floor is not None and key > floor
            ):
                self._replaying = False  # replays are over for this connection
        return new

    def before_anchor(self, event_id: str | None, processed_at: str | None) -> bool:
        """Whether an event may be the one just before the anchor (to stream after it).

        Not the anchor itself and not later than it: a server that ignored the
        query must not make the anchor's own message be skipped.
        """
        anchor = self.anchor
        if anchor is None or not event_id or event_id == anchor.event_id:
            return False
        key, anchor_key = order_key(processed_at), anchor.order_key
        return key is None or anchor_key is None or key <= anchor_key

    def next_after(
        self, cursor: FleetCursor, event_id: str | None, processed_at: str | None
    ) -> bool:
        """Whether an event already received is the next to deliver once ``cursor`` is
        committed (so one ``advance`` may commit the one and record the other in flight)."""
        return (
            bool(event_id)
            and event_id != cursor.event_id
            and self._new(event_id, order_key(processed_at))
        )

    def redelivered(self, event_id: str | None) -> bool:
        """Whether this event's handler may have run under an earlier owner."""
        return event_id is not None and event_id == self._inflight

    def gate(self) -> Gate:
        """Whether a handler may start now (:data:`GATES`)."""
        return GATES[self.lease.status]

    def delivered(self, event_id: str, processed_at: str | None, *, ends_turn: bool) -> FleetCursor:
        """The cursor to commit once the handler for this event returned."""
        return FleetCursor(event_id, processed_at, ends_turn=ends_turn)

    def committed(self, cursor: FleetCursor) -> None:
        """The coordinator stored ``cursor``: delivery stands there now."""
        if cursor.inclusive:
            raise ValueError("a committed cursor is never inclusive")
        self.cursor = cursor
        self._seen[cursor.event_id] = None
        if len(self._seen) > RECENT_IDS:
            del self._seen[next(iter(self._seen))]
        self._pending = False  # the coordinator is asked again at the release
        if cursor.event_id == self._inflight:
            self._inflight = None

    def may_release(self) -> bool:
        """Whether to try releasing the session: the cursor's event ended a turn (and,
        right after the claim, no sent message was pending)."""
        return self.cursor is not None and self.cursor.ends_turn and not self._pending


class ToolAction(enum.Enum):
    """What a follower does with a custom tool call, given its ledger record."""

    RUN = "run"
    """Claimed under our token with no result: run the tool (the only run, fleet-wide)."""
    POST = "post"
    """A result is stored: post it (never run the tool again)."""
    ORPHANED = "orphaned"
    """Claimed by an earlier owner that stopped while it ran: the outcome is unknown,
    so never run it again; store and post an error result."""
    SKIP = "skip"
    """The result was posted already."""


def tool_action(record: ToolRecord, token: int) -> ToolAction:
    """The :class:`ToolAction` for ``record``, seen by the holder of ``token``."""
    if record.state is ToolState.POSTED:
        return ToolAction.SKIP
    if record.state is ToolState.DONE:
        return ToolAction.POST
    if record.may_run(token):
        return ToolAction.RUN
    return ToolAction.ORPHANED


def fair_shares(loads: Iterable[WorkerLoad], claimable: int) -> dict[str, int]:
    """Share ``claimable`` sessions out one by one to the least loaded worker with room.

    Ties go to the smaller worker id, so every worker computing this from the
    same snapshot gets the same answer. Workers without room get nothing;
    sessions nobody has room for stay unassigned.
    """
    shares: dict[str, int] = {}
    heap: list[tuple[int, str, int | None]] = []
    for load in loads:
        shares[load.worker_id] = 0
        if load.room != 0:
            heap.append((load.sessions, load.worker_id, load.room))
    heapq.heapify(heap)
    for _ in range(claimable):
        if not heap:
            break
        sessions, wid, room = heapq.heappop(heap)
        shares[wid] += 1
        if room is None:
            heapq.heappush(heap, (sessions + 1, wid, None))
        elif room > 1:
            heapq.heappush(heap, (sessions + 1, wid, room - 1))
    return shares


class Balancer:
    """How many sessions this worker should claim now (see the module docstring).

    ``quota`` takes the worker's own count (fresher than the snapshot's) and the
    live workers' loads; it counts rounds in which work waited while this
    worker's share was zero and, after ``patience`` of them, claims one anyway.
    """

    __slots__ = ("_waiting", "max_sessions", "patience", "worker_id")

    def __init__(
        self, worker_id: str, *, max_sessions: int | None = None, patience: int = 3
    ) -> None:
        if max_sessions is not None and max_sessions < 0:
            raise ConfigurationError(f"max_sessions must be >= 0 or None, got {max_sessions!r}")
        self.worker_id = worker_id
        self.max_sessions = max_sessions
        self.patience = patience
        self._waiting = 0

    def room(self, held: int) -> int | None:
        """How many more sessions this worker may hold (``None``: no limit)."""
        return WorkerLoad(self.worker_id, held, self.max_sessions).room

    def quota(self, held: int, loads: Iterable[WorkerLoad], claimable: int) -> int:
        """Sessions to claim now, given ``held`` by this worker and ``claimable`` waiting."""
        me = WorkerLoad(self.worker_id, held, self.max_sessions)
        others = [w for w in loads if w.worker_id != self.worker_id]
        share = fair_shares([*others, me], claimable)[self.worker_id]
        if share > 0 or claimable == 0:
            self._waiting = 0
            return share
        if me.room == 0:
            return 0
        self._waiting += 1
        if self._waiting >= self.patience:
            self._waiting = 0
            return 1
        return 0


class OutageBackoff:
    """Retry pacing while the coordinator is unreachable (sans-I/O; never gives up).

    ``failed()`` after each failed call gives the delay before the next try;
    ``recovered()`` after a call succeeds. ``down_for`` says how long the outage
    has lasted (for logs). Delays come from :class:`Backoff`.
    """

    __slots__ = ("_clock", "_rand", "_since", "attempts", "backoff")

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self._clock = clock
        self._rand = rand
        self._since: float | None = None
        self.attempts = 0

    @property
    def down(self) -> bool:
        """Whether the last call failed."""
        return self._since is not None

    @property
    def down_for(self) -> float:
        """Seconds since the first failure of the current outage (0 when up)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def failed(self) -> float:
        """A call failed: the delay before the next try."""
        if self._since is None:
            self._since = self._clock()
        delay = self.backoff.delay(self.attempts, self._rand())
        self.attempts += 1
        return delay

    def recovered(self) -> None:
        """A call succeeded: the next failure starts from the first delay again."""
        self._since = None
        self.attempts = 0
