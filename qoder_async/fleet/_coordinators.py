"""SHELL: the fleet's coordinators (public as ``qoder_async.fleet``).

A *coordinator* is the shared state that lets worker processes split the
sessions of one bot between them: which sessions are active, who follows each
one (a lease with a TTL and a fencing token that grows on every claim), how far
delivery got (the committed cursor), which handler was running when a worker
died (so exactly that event is delivered again), and a ledger that makes each
custom tool run at most once fleet-wide. :class:`Coordinator` is the contract;
two implementations ship:

* :class:`MemoryCoordinator`: one process, no dependencies (the default, and
  for tests: its clock is injectable);
* :class:`RedisCoordinator`: many processes sharing a Redis (or Valkey)
  server, ``pip install "qoder-async[redis]"``.

Every rule they follow is written once, in the table of
``qoder_async.fleet._lease`` (the sans-I/O core); the contract tests run the same
cases against both, and run random sequences of every operation of that table
on both, comparing each answer and the state after it.

Redis keys (``ns`` is the namespace; the braces make it a Redis Cluster hash
tag, so a fleet's keys share one slot and its scripts may touch several; the
namespace holds no braces and comes first, so no id can forge another tag).
Every key depends injectively on its parts: the kinds below differ before the
first id, a key with one id ends with it, and the ledger's puts the length of
the session id first. No script walks the active line: lease deadlines (the
server's own clock, ``TIME``) sit in a sorted set, so a poll, a claim, a
renewal and a commit each cost O(log n) in the active sessions, plus what they
claim. A lease that ran out moves to the ready line once, at the next poll or
claim, at most 256 per call, soonest deadline first (when more than 256 leases
run out together, a worker holding them died: its sessions become claimable
over a few polls, each batch oldest activation first):

==============================  ======  ===============  ==========================================
key                             type    TTL              content
==============================  ======  ===============  ==========================================
``{ns}:v2:line``                zset    none             active sessions; score = place in line
                                                         (first activation first)
``{ns}:v2:line:seq``            string  none             counter giving places in line
``{ns}:v2:ready``               zset    none             active sessions without a live lease (the
                                                         claimable ones); score = place in line
``{ns}:v2:leases``              zset    none             active sessions with a lease; score = its
                                                         deadline (server ms); each active session
                                                         is in exactly one of ready and leases
``{ns}:s:<session>``            hash    none             ``token`` (last issued), ``holder``
                                                         (worker, "" when none), committed cursor
                                                         ``c_id c_at c_key c_incl c_end``, in-flight
                                                         handler ``f_id f_token``
``{ns}:pending:<session>``      hash    none             sent ``user.message`` ids not committed
                                                         yet (by id) -> "1"
``{ns}:recent:<session>``       list    none             the last ``RECENT_IDS`` committed event
                                                         ids, newest first
``{ns}:v2:held:<worker>``       set     none             sessions whose holder is the worker
``{ns}:v2:workers``             set     none             worker ids (pruned when their record is
                                                         gone)
``{ns}:v2:w:<worker>``          hash    worker ttl       ``max`` sessions ("" = no limit),
                                                         ``inst`` (the announcing process)
``{ns}:work:quiet``             string  WORK_WINDOW      set when a notification went out on the
                                                         ``{ns}:work`` channel (at most one per
                                                         window)
``{ns}:tool:<n>:<session>:<u>`` hash    ledger ttl       ``state token result`` of custom tool
                                                         call ``u``; ``n`` is the session id's
                                                         length (default 7 days after its
                                                         last change)
==============================  ======  ===============  ==========================================

Upgrading from the layout before ``v2`` (``{ns}:line`` walked by every claim,
a ``{ns}:lease:<session>`` key per lease, ``{ns}:workers``): the per-session
keys (``s:``, ``pending:``, ``recent:``, ``tool:``) are shared, the rest is
not, so old and new workers must never run together in one namespace. A
worker of this version refuses to start (``announce`` raises
``ConfigurationError``: ``serve()`` fails at once) while a worker of the old
layout is alive there; once none is (stop them, or wait a lease), its first
``announce`` moves the old active line over (at the old places in line,
cursors, pending sends, tokens and tool records kept; the old leases end, so
each session is claimed again and its in-flight event redelivered) and
deletes the old keys. ``claimable`` does the same move when an old front end
marked sessions active meanwhile. Stop the old workers before starting new
ones (front ends may be upgraded in any order: an old front end's sends move
over at the next poll).

Durability: leases, cursors, tokens and the tool ledger are only as durable as
the Redis holding them. Run it with AOF (``appendonly yes``,
``appendfsync always`` for the full guarantees): a Redis that restarts without
its data (or is flushed) forgets cursors, pending sends, the ledger and fencing
tokens. The workers following a session then ``restore`` it at their own
cursors (nothing is skipped), but a token could be issued twice and a tool
call run again. ``appendfsync everysec`` can lose the last second of writes on
a crash of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar, runtime_checkable

from qoder_async._core.backoff import Backoff
from qoder_async._core.errors import ConfigurationError, CoordinatorUnavailableError, LeaseLostError
from qoder_async._shell.tasks import cancel_and_wait

from ._lease import (
    RECENT_IDS,
    Claim,
    FleetCursor,
    InFlight,
    LeaseTable,
    SessionInfo,
    ToolRecord,
    ToolState,
    WorkerLoad,
)

try:  # mypy without the extra installed: these are Any, not errors
    from redis import asyncio as redis_asyncio  # type: ignore[import-not-found,unused-ignore]
    from redis.asyncio.retry import Retry  # type: ignore[import-not-found,unused-ignore]
    from redis.backoff import NoBackoff  # type: ignore[import-not-found,unused-ignore]
    from redis.exceptions import (  # type: ignore[import-not-found,unused-ignore]
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        AuthorizationError,
        NoPermissionError,
        NoScriptError,
        RedisError,
        ResponseError,
    )
except ImportError:  # the redis extra is not installed; RedisCoordinator says so
    redis_asyncio = None  # type: ignore[assignment,unused-ignore]
    RedisError = OSError  # type: ignore[assignment,misc,unused-ignore]
    NoScriptError = OSError  # type: ignore[assignment,misc,unused-ignore]
    ResponseError = OSError  # type: ignore[assignment,misc,unused-ignore]
    AuthenticationError = AuthenticationWrongNumberOfArgsError = ResponseError  # type: ignore[assignment,misc,unused-ignore]
    AuthorizationError = NoPermissionError = ResponseError  # type: ignore[assignment,misc,unused-ignore]

__all__ = [
    "DEFAULT_LEDGER_TTL",
    "WORK_WINDOW",
    "Coordinator",
    "MemoryCoordinator",
    "RedisCoordinator",
]

logger = logging.getLogger("qoder_async")

_P = ParamSpec("_P")
_R = TypeVar("_R")

DEFAULT_LEDGER_TTL = 7 * 86400.0
"""How long tool-ledger records are kept after their last change: 7 days."""

WORK_WINDOW = 0.02
"""Seconds a watcher waits, once woken, before it looks for work: a shared
coordinator notifies at most once per window (a burst of sends is one wake-up),
so what the rest of the window brought is claimed in the same round."""


@runtime_checkable
class Coordinator(Protocol):
    """What a fleet needs from its shared state. Every method is a coroutine.

    Tokens: a *fencing token* is an int issued by :meth:`claim`, one higher for
    every claim of the same session. An operation that names ``(session_id,
    token)`` is refused with :class:`LeaseLostError` unless ``token`` is the
    last one issued for the session and the lease was neither released nor
    handed off since; a lease whose TTL ran out is still valid while nobody
    claims the session again (a renewal revives it). Each check and its write
    are one atomic step.

    Failures: every method raises :class:`CoordinatorUnavailableError` when
    the shared state cannot be reached; the operation may or may not have been
    applied, and each is safe to retry with the same arguments (a retried
    release or hand-off whose first attempt went through raises
    :class:`LeaseLostError`: the lease is gone either way).

    TTLs are in seconds (floats). Cursors are ordered by ``processed_at``
    (event ids are opaque): a cursor without one is never refused as older.
    """

    async def mark_active(self, session_id: str, anchor: FleetCursor | None = None) -> None:
        """Make ``session_id`` active fleet-wide, so some worker claims and follows it.

        ``anchor`` is where a send's own ``user.message`` sits
        (``FleetCursor(message_id, processed_at, inclusive=True)``): it becomes the
        session's cursor only if the session has none, so a send never moves a
        committed cursor. The message stays *pending* (the session cannot be
        released) until a commit covers it. A session already active keeps its
        place in line. Idempotent.
        """
        ...

    async def claimable(self, limit: int | None = None) -> list[str]:
        """Active sessions whose lease is gone (or never was), oldest activation first."""
        ...

    async def claim(
        self, worker_id: str, *, ttl: float, limit: int = 1, max_sessions: int | None = None
    ) -> list[Claim]:
        """Atomically claim up to ``limit`` claimable sessions for ``worker_id``.

        Oldest activation first; each claimed session gets a new fencing token
        (the previous + 1) and a lease of ``ttl`` seconds, and ``worker_id``
        never ends up holding more than ``max_sessions``. Each :class:`Claim`
        carries the committed cursor and the in-flight record a previous owner
        left (that one event is delivered again, ``redelivered=True``).
        """
        ...

    async def renew(self, session_id: str, token: int, *, ttl: float) -> None:
        """Extend the lease so it ends ``ttl`` seconds from now (reviving it if it lapsed
        unclaimed). Raises :class:`LeaseLostError` if ``token`` is stale."""
        ...

    async def renew_many(self, tokens: Mapping[str, int], *, ttl: float) -> set[str]:
        """:meth:`renew` for many ``session_id -> token`` at once (one round trip);
        returns the session ids whose lease is lost instead of raising."""
        ...

    async def begin_handler(self, session_id: str, token: int, event_id: str) -> None:
        """Record "the handler for ``event_id`` is running under ``token``" before it
        starts; :meth:`commit` clears it. Raises :class:`LeaseLostError` if stale."""
        ...

    async def commit(self, session_id: str, token: int, cursor: FleetCursor) -> bool:
        """After the handler for ``cursor.event_id`` returned: store ``cursor``.

        Clears the in-flight record and the pending message with the cursor's
        id, and remembers the id among the session's recent ones. Never
        refused for its ``processed_at`` (only the valid holder commits, in
        stored order; server clocks may disagree): returns ``True``.
        ``cursor.inclusive`` must be false; set ``cursor.ends_turn`` when the
        event ended a turn, so a later owner knows it may release the session
        without new events. Raises :class:`LeaseLostError` if ``token`` is stale.
        """
        ...

    async def restore(
        self,
        session_id: str,
        token: int,
        worker_id: str,
        *,
        ttl: float,
        cursor: FleetCursor | None,
        inflight: InFlight | None = None,
    ) -> bool:
        """After an operation under ``token`` was refused: whether the store had lost
        the session's record (none at all, or one whose token is below ``token``:
        tokens never go down unless data was lost), in which case it is recreated,
        atomically, held by ``worker_id`` under ``token`` with a lease of ``ttl``,
        active, at ``cursor`` with ``inflight``. ``False`` and no change when the
        record is there: the lease is really lost."""
        ...

    async def advance(
        self, session_id: str, token: int, cursor: FleetCursor, next_event_id: str
    ) -> bool:
        """:meth:`commit` ``cursor`` and then :meth:`begin_handler` ``next_event_id``, as
        one atomic step (one round trip per event while events queue up).

        Returns what the commit returns.
        Raises :class:`LeaseLostError` if ``token`` is stale (and changes nothing).
        """
        ...

    async def release(self, session_id: str, token: int) -> bool:
        """The session's turn ended: stop following it.

        Succeeds (``True``: the lease ends and the session is no longer
        active) only if no sent message is pending and no handler is in
        flight; otherwise ``False`` and nothing changes (keep following).
        Raises :class:`LeaseLostError` if ``token`` is stale.
        """
        ...

    async def hand_off(self, session_id: str, token: int) -> None:
        """Give the lease up while the session stays active (shutdown, rebalancing):
        another worker may claim it at once. Raises :class:`LeaseLostError` if stale."""
        ...

    async def claim_tool(self, session_id: str, token: int, tool_use_id: str) -> ToolRecord:
        """The ledger record of custom tool call ``tool_use_id``, created RUNNING under
        ``token`` if it has none. Run the tool only if ``record.may_run(token)``; a
        RUNNING record under another token belongs to an owner that died (outcome
        unknown: never run it again). Raises :class:`LeaseLostError` if stale."""
        ...

    async def store_tool_result(
        self, session_id: str, token: int, tool_use_id: str, result: str
    ) -> ToolRecord:
        """Store a tool call's result (RUNNING -> DONE) and return the record.

        The first stored result wins: if one was stored already the record is
        returned unchanged, and that result is the one to post. Raises
        :class:`LeaseLostError` if ``token`` is stale.
        """
        ...

    async def mark_tool_posted(self, session_id: str, tool_use_id: str) -> None:
        """The stored result was posted (DONE -> POSTED). Needs no token: it records a
        fact, and a later owner seeing POSTED does not post it again."""
        ...

    async def tool_record(self, session_id: str, tool_use_id: str) -> ToolRecord | None:
        """The ledger record of ``tool_use_id`` (``None`` if never claimed or expired)."""
        ...

    async def announce(
        self, worker_id: str, *, ttl: float, max_sessions: int | None = None, instance: str = ""
    ) -> bool:
        """Register ``worker_id`` (run by process ``instance``) as alive for ``ttl`` seconds
        (call again well before). Returns ``False`` and changes nothing while a live
        record of ``worker_id`` names another instance: two processes with one id."""
        ...

    async def retire(self, worker_id: str, instance: str = "") -> None:
        """Remove ``worker_id``'s record at shutdown (hand its leases off first), only if
        it is ``instance``'s: a live twin's record stays."""
        ...

    async def workers(self) -> list[WorkerLoad]:
        """Live workers and how many sessions each holds, sorted by worker id."""
        ...

    async def inspect(self, session_id: str) -> SessionInfo | None:
        """A snapshot of what is known about ``session_id`` (``None``: never seen)."""
        ...

    def watch(self) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """``async with coordinator.watch() as work:``: ``work`` is set whenever a
        session may have become claimable (marked active, handed off), by any
        process sharing this coordinator.

        A hint that lets workers claim at once instead of at their next poll:
        it may be set for nothing, and a notification may be lost (a Redis
        connection that dropped), so workers still poll. Clear it yourself
        before looking for work, and once it is set wait :data:`WORK_WINDOW`
        before looking: notifications may be throttled to one per window.
        """
        ...

    async def aclose(self) -> None:
        """Release the coordinator's own resources (a borrowed client stays open)."""
        ...


class _Watchers:
    """The events handed out by ``watch()``: set them all on a notification."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: set[asyncio.Event] = set()

    def notify(self) -> None:
        for event in self.events:
            event.set()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self.events.add(event)
        try:
            yield event
        finally:
            self.events.discard(event)


def _on_table(
    method: Callable[Concatenate[LeaseTable, _P], _R],
) -> Callable[Concatenate[MemoryCoordinator, _P], Coroutine[Any, Any, _R]]:
    """``LeaseTable``'s ``method`` as a coroutine method of :class:`MemoryCoordinator`."""

    async def call(self: MemoryCoordinator, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(self.table, *args, **kwargs)

    functools.update_wrapper(call, method, ("__name__",))  # and __wrapped__: its signature
    call.__qualname__ = f"MemoryCoordinator.{method.__name__}"
    call.__doc__ = f"See :meth:`Coordinator.{method.__name__}`."
    return call


class MemoryCoordinator:
    """A :class:`Coordinator` in this process's memory: no server, same rules.

    The default when every worker is an asyncio task of one process, and the
    coordinator of tests: pass ``clock`` (seconds, monotonic) to move lease
    time by hand. ``ledger_ttl`` is how long tool-ledger records are kept.
    Every method is :class:`LeaseTable`'s (``table``); ``mark_active`` and
    ``hand_off`` also wake the watchers.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ledger_ttl: float = DEFAULT_LEDGER_TTL,
    ) -> None:
        self.table = LeaseTable(clock=clock, ledger_ttl=ledger_ttl)
        self._watchers = _Watchers()

    def __repr__(self) -> str:
        return "MemoryCoordinator()"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def mark_active(self, session_id: str, anchor: FleetCursor | None = None) -> None:
        """See :meth:`Coordinator.mark_active`."""
        self.table.mark_active(session_id, anchor)
        self._watchers.notify()

    async def hand_off(self, session_id: str, token: int) -> None:
        """See :meth:`Coordinator.hand_off`."""
        self.table.hand_off(session_id, token)
        self._watchers.notify()

    claimable = _on_table(LeaseTable.claimable)
    claim = _on_table(LeaseTable.claim)
    renew = _on_table(LeaseTable.renew)
    renew_many = _on_table(LeaseTable.renew_many)
    begin_handler = _on_table(LeaseTable.begin_handler)
    commit = _on_table(LeaseTable.commit)
    advance = _on_table(LeaseTable.advance)
    restore = _on_table(LeaseTable.restore)
    release = _on_table(LeaseTable.release)
    claim_tool = _on_table(LeaseTable.claim_tool)
    store_tool_result = _on_table(LeaseTable.store_tool_result)
    mark_tool_posted = _on_table(LeaseTable.mark_tool_posted)
    tool_record = _on_table(LeaseTable.tool_record)
    announce = _on_table(LeaseTable.announce)
    retire = _on_table(LeaseTable.retire)
    workers = _on_table(LeaseTable.workers)
    inspect = _on_table(LeaseTable.inspect)

    def watch(self) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """See :meth:`Coordinator.watch` (set by this coordinator's own calls)."""
        return self._watchers.watching()

    async def aclose(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- Redis

# Shared by every script: ARGV[1] is the key prefix "{ns}:" (the keys, and what each
# script costs: the module docstring). Lease deadlines are the server's own clock
# (TIME, in ms): workers' clocks never decide who holds a session.
_LUA_PRELUDE = """
local P = ARGV[1]
local WORK_WINDOW = @WORK_WINDOW_MS@
local LINE, SEQ = P .. 'v2:line', P .. 'v2:line:seq'
local READY, LEASES = P .. 'v2:ready', P .. 'v2:leases'
local WORKERS = P .. 'v2:workers'
local function skey(sid) return P .. 's:' .. sid end
local function pkey(sid) return P .. 'pending:' .. sid end
local function rkey(sid) return P .. 'recent:' .. sid end
local function hkey(wid) return P .. 'v2:held:' .. wid end
local function wkey(wid) return P .. 'v2:w:' .. wid end
local function tkey(sid, use) return P .. 'tool:' .. #sid .. ':' .. sid .. ':' .. use end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function valid(sid, token)
  local t = redis.call('HMGET', skey(sid), 'token', 'holder')
  return t[2] ~= false and t[2] ~= '' and t[1] == token
end
local function leased(sid, now)
  local d = redis.call('ZSCORE', LEASES, sid)
  return d ~= false and tonumber(d) > now
end
-- Leases that ran out join the ready line at their place (each one once; at
-- most REAP a call, soonest deadline first: no script is long, even when a
-- worker holding thousands of sessions dies).
local function reap(now)
  local gone = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, @REAP@)
  if #gone == 0 then return end
  for _, sid in ipairs(gone) do
    local place = redis.call('ZSCORE', LINE, sid)
    if place then redis.call('ZADD', READY, place, sid) end
  end
  redis.call('ZREM', LEASES, unpack(gone))
end
-- At most one notification per WORK_WINDOW ms: a watcher claims a window after
-- it is woken, so what the window held without a notification is claimed too.
local function notify_work()
  if redis.call('SET', P .. 'work:quiet', '1', 'NX', 'PX', WORK_WINDOW) then
    redis.call('PUBLISH', P .. 'work', '1')
  end
end
-- The key layout before v2 (a sorted line walked by every claim, a key per
-- lease): while a worker of that version is alive, refuse (false); once none
-- is, move its active sessions into this layout (their leases end; cursors,
-- pending sends, tokens and the tool ledger are shared keys and stay).
local function upgrade()
  local old_line, old_workers = P .. 'line', P .. 'workers'
  if redis.call('EXISTS', old_line, old_workers) == 0 then return true end
  local wids = redis.call('SMEMBERS', old_workers)
  for _, wid in ipairs(wids) do
    if redis.call('EXISTS', P .. 'w:' .. wid) == 1 then return false end
  end
  for _, wid in ipairs(wids) do redis.call('DEL', P .. 'held:' .. wid) end
  for _, sid in ipairs(redis.call('ZRANGE', old_line, 0, -1)) do
    redis.call('DEL', P .. 'lease:' .. sid)
    if not redis.call('ZSCORE', LINE, sid) then
      redis.call('HSET', skey(sid), 'holder', '')
      local place = redis.call('INCR', SEQ)
      redis.call('ZADD', LINE, place, sid)
      redis.call('ZADD', READY, place, sid)
    end
  end
  redis.call('DEL', old_line, P .. 'line:seq', old_workers)
  notify_work()
  return true
end
""".replace("@WORK_WINDOW_MS@", str(round(WORK_WINDOW * 1000))).replace("@REAP@", "256")

# ARGV: prefix, session, has_anchor, id, processed_at, order key, inclusive
_MARK_ACTIVE = """
local sid = ARGV[2]
local s = skey(sid)
redis.call('HSETNX', s, 'token', 0)
if ARGV[3] == '1' then
  if redis.call('HEXISTS', s, 'c_id') == 0 then
    redis.call('HSET', s, 'c_id', ARGV[4], 'c_at', ARGV[5], 'c_key', ARGV[6], 'c_incl', ARGV[7],
               'c_end', '0')
  end
  local c = redis.call('HMGET', s, 'c_id', 'c_incl')
  local done = (c[1] == ARGV[4] and c[2] ~= '1')
    or redis.call('LPOS', rkey(sid), ARGV[4]) ~= false
  if not done then redis.call('HSET', pkey(sid), ARGV[4], '1') end
end
if not redis.call('ZSCORE', LINE, sid) then
  local place = redis.call('INCR', SEQ)
  redis.call('ZADD', LINE, place, sid)
  redis.call('ZADD', READY, place, sid)
  notify_work()
elseif not leased(sid, now_ms()) then
  notify_work()
end
return 1
"""

# ARGV: prefix, limit (-1: all)
_CLAIMABLE = """
local limit = tonumber(ARGV[2])
if limit == 0 then return {} end
upgrade()
reap(now_ms())
return redis.call('ZRANGE', READY, 0, limit < 0 and -1 or limit - 1)
"""

# ARGV: prefix, worker, ttl ms, limit, max sessions (-1: none)
_CLAIM = """
local wid = ARGV[2]
local room, max = tonumber(ARGV[4]), tonumber(ARGV[5])
if max >= 0 then
  local left = max - redis.call('SCARD', hkey(wid))
  if left < room then room = left end
end
local out = {}
if room <= 0 then return out end
local now = now_ms()
reap(now)
local deadline = now + tonumber(ARGV[3])
for _, sid in ipairs(redis.call('ZRANGE', READY, 0, room - 1)) do
  local s = skey(sid)
  local prev = redis.call('HGET', s, 'holder')
  if prev and prev ~= '' then redis.call('SREM', hkey(prev), sid) end
  local token = redis.call('HINCRBY', s, 'token', 1)
  redis.call('HSET', s, 'holder', wid)
  redis.call('ZREM', READY, sid)
  redis.call('ZADD', LEASES, deadline, sid)
  redis.call('SADD', hkey(wid), sid)
  local c = redis.call('HMGET', s, 'c_id', 'c_at', 'c_incl', 'c_end', 'f_id', 'f_token')
  out[#out + 1] = {sid, token, c[1] or '', c[2] or '', c[3] or '', c[4] or '', c[5] or '',
                   c[6] or '', redis.call('EXISTS', pkey(sid))}
end
return out
"""

# ARGV: prefix, ttl ms, then pairs of session, token. Returns the lost sessions.
_RENEW = """
local lost = {}
local deadline = now_ms() + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local sid = ARGV[i]
  if valid(sid, ARGV[i + 1]) then
    redis.call('ZADD', LEASES, deadline, sid)
    redis.call('ZREM', READY, sid)
  else
    lost[#lost + 1] = sid
  end
end
return lost
"""

# ARGV: prefix, session, token, event id. 1 ok, -1 lost.
_BEGIN = """
if not valid(ARGV[2], ARGV[3]) then return -1 end
redis.call('HSET', skey(ARGV[2]), 'f_id', ARGV[4], 'f_token', ARGV[3])
return 1
"""


# ARGV: prefix, session, token, worker, ttl ms, c_id, c_at, c_key, c_incl, c_end, f_id.
# 1 restored, 0 the record is there (at this token or a newer one).
_RESTORE = """
local sid, token, wid = ARGV[2], ARGV[3], ARGV[4]
local s = skey(sid)
local t = redis.call('HGET', s, 'token')
if t and tonumber(t) >= tonumber(token) then return 0 end
local prev = redis.call('HGET', s, 'holder')
if prev and prev ~= '' then redis.call('SREM', hkey(prev), sid) end
redis.call('HSET', s, 'token', token, 'holder', wid, 'c_id', ARGV[6], 'c_at', ARGV[7],
           'c_key', ARGV[8], 'c_incl', ARGV[9], 'c_end', ARGV[10])
if ARGV[11] ~= '' then
  redis.call('HSET', s, 'f_id', ARGV[11], 'f_token', token)
else
  redis.call('HDEL', s, 'f_id', 'f_token')
end
redis.call('ZADD', LEASES, now_ms() + tonumber(ARGV[5]), sid)
redis.call('ZREM', READY, sid)
redis.call('SADD', hkey(wid), sid)
if not redis.call('ZSCORE', LINE, sid) then
  redis.call('ZADD', LINE, redis.call('INCR', SEQ), sid)
end
return 1
"""

# The commit rule: never refused for its time (identity is the id: only the valid holder
# commits, in stored order). ARGV: prefix, session, token, id, processed_at, order key,
# ends turn, then (an advance) the next event id, recorded in flight. 1 stored, -1 lost.
_COMMIT = """
local sid, token, id = ARGV[2], ARGV[3], ARGV[4]
if not valid(sid, token) then return -1 end
local s = skey(sid)
redis.call('HSET', s, 'c_id', id, 'c_at', ARGV[5], 'c_key', ARGV[6], 'c_incl', '0',
           'c_end', ARGV[7])
redis.call('HDEL', s, 'f_id', 'f_token')
redis.call('HDEL', pkey(sid), id)
redis.call('LPUSH', rkey(sid), id)
redis.call('LTRIM', rkey(sid), 0, @RECENT@ - 1)
if ARGV[8] then redis.call('HSET', s, 'f_id', ARGV[8], 'f_token', token) end
return 1
""".replace("@RECENT@", str(RECENT_IDS))

# ARGV: prefix, session, token, release ("1") or hand off ("0"). 1 done, 0 busy, -1 lost.
_LET_GO = """
local sid = ARGV[2]
if not valid(sid, ARGV[3]) then return -1 end
local s = skey(sid)
local release = ARGV[4] == '1'
if release and (redis.call('EXISTS', pkey(sid)) == 1 or redis.call('HEXISTS', s, 'f_id') == 1) then
  return 0
end
redis.call('SREM', hkey(redis.call('HGET', s, 'holder')), sid)
redis.call('HSET', s, 'holder', '')
redis.call('ZREM', LEASES, sid)
if release then
  redis.call('ZREM', LINE, sid)
  redis.call('ZREM', READY, sid)
else
  local place = redis.call('ZSCORE', LINE, sid)
  if place then redis.call('ZADD', READY, place, sid) end
  notify_work()
end
return 1
"""

# Tool records come back as {status, state, token, result, has_result}.
_TOOL_READ = """
local function record(k)
  local r = redis.call('HMGET', k, 'state', 'token', 'result')
  if not r[1] then return {1} end
  return {1, r[1], r[2], r[3] or '', r[3] and 1 or 0}
end
"""

# ARGV: prefix, session, token, tool use id, ledger ttl ms
_TOOL_CLAIM = """
if not valid(ARGV[2], ARGV[3]) then return {-1} end
local k = tkey(ARGV[2], ARGV[4])
if redis.call('EXISTS', k) == 0 then
  redis.call('HSET', k, 'state', 'running', 'token', ARGV[3])
  redis.call('PEXPIRE', k, ARGV[5])
end
return record(k)
"""

# ARGV: prefix, session, token, tool use id, ledger ttl ms, result
_TOOL_STORE = """
if not valid(ARGV[2], ARGV[3]) then return {-1} end
local k = tkey(ARGV[2], ARGV[4])
local state = redis.call('HGET', k, 'state')
if not state or state == 'running' then
  local claimed = redis.call('HGET', k, 'token') or ARGV[3]
  redis.call('HSET', k, 'state', 'done', 'token', claimed, 'result', ARGV[6])
  redis.call('PEXPIRE', k, ARGV[5])
end
return record(k)
"""

# ARGV: prefix, session, tool use id, ledger ttl ms
_TOOL_POSTED = """
local k = tkey(ARGV[2], ARGV[3])
if redis.call('HGET', k, 'state') == 'done' then
  redis.call('HSET', k, 'state', 'posted')
  redis.call('PEXPIRE', k, ARGV[4])
end
return 1
"""

# ARGV: prefix, session, tool use id
_TOOL_GET = """
return record(tkey(ARGV[2], ARGV[3]))
"""

# ARGV: prefix, worker, ttl ms, max sessions ("" = none), instance. 0: a live twin's record;
# -2: workers of the previous key layout are alive (see upgrade()).
_ANNOUNCE = """
if not upgrade() then return -2 end
local k = wkey(ARGV[2])
local inst = redis.call('HGET', k, 'inst')
if inst and inst ~= ARGV[5] then return 0 end
redis.call('HSET', k, 'max', ARGV[4], 'inst', ARGV[5])
redis.call('PEXPIRE', k, ARGV[3])
redis.call('SADD', WORKERS, ARGV[2])
return 1
"""

# ARGV: prefix, worker, instance
_RETIRE = """
local k = wkey(ARGV[2])
local inst = redis.call('HGET', k, 'inst')
if inst and inst ~= ARGV[3] then return 0 end
redis.call('DEL', k)
redis.call('SREM', WORKERS, ARGV[2])
return 1
"""

# ARGV: prefix. Returns {worker, sessions held, max} for live workers.
_WORKERS = """
local out = {}
for _, wid in ipairs(redis.call('SMEMBERS', WORKERS)) do
  local max = redis.call('HGET', wkey(wid), 'max')
  if max then
    out[#out + 1] = {wid, redis.call('SCARD', hkey(wid)), max}
  else
    redis.call('SREM', WORKERS, wid)
  end
end
return out
"""

# ARGV: prefix, session. {} if unknown, else
# {active, holder, leased, token, c_id, c_at, c_incl, c_end, f_id, f_token, pending...}
_INSPECT = """
local sid = ARGV[2]
local s = skey(sid)
if redis.call('EXISTS', s) == 0 then return {} end
local f = redis.call('HMGET', s, 'token', 'holder', 'c_id', 'c_at', 'c_incl', 'c_end', 'f_id',
                     'f_token')
local active = redis.call('ZSCORE', LINE, sid) and 1 or 0
local holder = f[2] or ''
local live = (holder ~= '' and leased(sid, now_ms())) and 1 or 0
local out = {active, holder, live, f[1] or '0', f[3] or '', f[4] or '', f[5] or '',
             f[6] or '', f[7] or '', f[8] or ''}
for _, id in ipairs(redis.call('HKEYS', pkey(sid))) do out[#out + 1] = id end
return out
"""

_NAMESPACE = re.compile(r"[^\s{}]+")
_MAX_BATCH = 500  # calls per pipelined round trip
_OLD_LAYOUT_ALIVE = -2  # _ANNOUNCE's answer while workers of the pre-v2 layout live
# The work channel: how long one read waits (below the pool's socket timeout), and
# the pace of subscribing again after the connection failed.
_WORK_READ_TIMEOUT = 1.0
_WORK_RESUBSCRIBE = Backoff(initial=0.1, maximum=5.0)


_PERMANENT = {  # an error code in a Redis reply, and what it means
    "NOAUTH": "authentication missing (NOAUTH): put the password in the URL",
    "WRONGPASS": "authentication failed (WRONGPASS): check the URL's user and password",
    "NOPERM": "NOPERM: the user lacks a permission (ACL) the fleet needs",
    "WRONGTYPE": "WRONGTYPE: a key of the namespace holds another type (another program?)",
}


def _permanent(exc: BaseException) -> str | None:
    """What is wrong when ``exc`` cannot heal by waiting (credentials, ACLs, a key of
    the namespace holding another type), else ``None`` (connection refused, timeouts,
    LOADING, READONLY and the other failover errors: retried)."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return "authentication failed or missing (NOAUTH, WRONGPASS): check the URL's credentials"
    if isinstance(exc, AuthorizationError | NoPermissionError):
        return _PERMANENT["NOPERM"]
    if isinstance(exc, ResponseError):
        return next((cause for code, cause in _PERMANENT.items() if code in str(exc)), None)
    return None


def _require_redis() -> None:
    if redis_asyncio is None:
        raise ConfigurationError(
            'RedisCoordinator needs the redis package: pip install "qoder-async[redis]"'
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _ms(seconds: float) -> int:
    if not seconds > 0:
        raise ValueError(f"ttl must be positive, got {seconds!r}")
    return max(1, round(seconds * 1000))


def _position(fields: Sequence[str]) -> tuple[FleetCursor | None, InFlight | None]:
    """The cursor and the in-flight record of the fields ``c_id c_at c_incl c_end f_id f_token``."""
    c_id, c_at, c_incl, c_end, f_id, f_token = fields
    cursor = None
    if c_id:
        cursor = FleetCursor(c_id, c_at or None, inclusive=c_incl == "1", ends_turn=c_end == "1")
    return cursor, InFlight(f_id, int(f_token)) if f_id else None


def _cursor_args(cursor: FleetCursor | None) -> tuple[str, str, str, str, str]:
    """``cursor`` as the scripts store it: ``c_id c_at c_key c_incl c_end`` (no id: none)."""
    if cursor is None:
        return "", "", "", "0", "0"
    return (
        cursor.event_id,
        cursor.processed_at or "",
        cursor.order_key or "",
        "1" if cursor.inclusive else "0",
        "1" if cursor.ends_turn else "0",
    )


def _commit_args(cursor: FleetCursor) -> tuple[str, str, str, str]:
    if cursor.inclusive:
        raise ValueError("a committed cursor is never inclusive")
    c_id, c_at, c_key, _, c_end = _cursor_args(cursor)
    return c_id, c_at, c_key, c_end


def _tool(tool_use_id: str, reply: Sequence[object]) -> ToolRecord | None:
    if len(reply) < 5:
        return None
    state, token, result, has_result = (_text(x) for x in reply[1:5])
    return ToolRecord(
        tool_use_id, ToolState(state), int(token), result if has_result == "1" else None
    )


class RedisCoordinator:
    """A :class:`Coordinator` in Redis (or Valkey), shared by every worker of a fleet.

    ``RedisCoordinator.from_url("redis://host:6379/0", namespace="mybot")``
    creates (and on :meth:`aclose` closes) its own ``redis.asyncio.Redis``;
    ``RedisCoordinator(client, namespace=...)`` borrows yours and never closes
    it. Every check-and-write is one Lua script (``EVALSHA``, loaded again when
    the server lost its script cache), so fencing holds whatever the
    interleaving. Calls made while a round trip is in flight are sent
    together in the next one (a pipeline of independent scripts, not a
    transaction): a worker following hundreds of sessions pays one round
    trip, not hundreds, and far less client CPU per call. Every key starts
    with ``{namespace}:`` (see the module docstring's table for each key, its
    type and TTL). Redis errors and
    timeouts raise :class:`CoordinatorUnavailableError`.

    Requires the ``redis`` extra (``pip install "qoder-async[redis]"``).
    """

    def __init__(
        self,
        client: redis_asyncio.Redis,
        *,
        namespace: str = "qoder",
        ledger_ttl: float = DEFAULT_LEDGER_TTL,
    ) -> None:
        _require_redis()
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                f"namespace must be non-empty without spaces or braces, got {namespace!r}"
            )
        self._client = client
        self._owns_client = False
        self._watchers = _Watchers()
        self._subscriber: asyncio.Task[None] | None = None
        self._queue: list[tuple[Any, list[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.namespace = namespace
        self.prefix = "{" + namespace + "}:"
        self._ledger_ms = _ms(ledger_ttl)
        register = client.register_script
        self._mark_active = register(_LUA_PRELUDE + _MARK_ACTIVE)
        self._claimable = register(_LUA_PRELUDE + _CLAIMABLE)
        self._claim = register(_LUA_PRELUDE + _CLAIM)
        self._renew = register(_LUA_PRELUDE + _RENEW)
        self._begin = register(_LUA_PRELUDE + _BEGIN)
        self._commit = register(_LUA_PRELUDE + _COMMIT)
        self._let_go = register(_LUA_PRELUDE + _LET_GO)
        self._restore = register(_LUA_PRELUDE + _RESTORE)
        self._tool_claim = register(_LUA_PRELUDE + _TOOL_READ + _TOOL_CLAIM)
        self._tool_store = register(_LUA_PRELUDE + _TOOL_READ + _TOOL_STORE)
        self._tool_posted = register(_LUA_PRELUDE + _TOOL_POSTED)
        self._tool_get = register(_LUA_PRELUDE + _TOOL_READ + _TOOL_GET)
        self._announce = register(_LUA_PRELUDE + _ANNOUNCE)
        self._retire = register(_LUA_PRELUDE + _RETIRE)
        self._workers = register(_LUA_PRELUDE + _WORKERS)
        self._inspect = register(_LUA_PRELUDE + _INSPECT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "qoder",
        ledger_ttl: float = DEFAULT_LEDGER_TTL,
        socket_timeout: float = 2.0,
        max_connections: int = 64,
        **redis_options: Any,
    ) -> RedisCoordinator:
        """A coordinator on its own client for ``url`` (``redis://``, ``rediss://``, ``unix://``).

        ``socket_timeout`` bounds each call; keep it below a third of the
        fleet's ``lease_ttl``, so a hung renewal cannot eat a lease. The client retries a failed
        call once at once (a pooled connection may have died with a Redis
        restart); longer outages are the fleet's to wait out, with backoff.
        At most ``max_connections`` are open at once; a call waits (up to
        ``socket_timeout``) for a free one instead of failing, so a worker
        following hundreds of sessions queues its calls rather than taking
        a busy pool for an outage. ``redis_options`` go to the connections
        (``redis.asyncio.BlockingConnectionPool.from_url``).
        """
        _require_redis()
        redis_options.setdefault("socket_connect_timeout", socket_timeout)
        # redis < 5.0.8 leaves NoBackoff.__init__ unannotated (mypy --strict: no-untyped-call).
        no_backoff = NoBackoff()  # type: ignore[no-untyped-call,unused-ignore]
        redis_options.setdefault("retry", Retry(no_backoff, 1))
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            **redis_options,
        )
        client = redis_asyncio.Redis.from_pool(pool)
        coordinator = cls(client, namespace=namespace, ledger_ttl=ledger_ttl)
        coordinator._owns_client = True
        return coordinator

    def __repr__(self) -> str:
        return f"RedisCoordinator(namespace={self.namespace!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, script: Any, *args: object) -> Any:
        """Run ``script`` with ``args`` in the next pipelined round trip."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, [self.prefix, *args], fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=f"qoder_async {self!r} pipeline"
            )
        try:
            return await fut
        except (RedisError, OSError) as exc:
            cause = _permanent(exc)
            if cause is not None:
                raise ConfigurationError(
                    f"Redis coordinator {self.namespace!r} is misconfigured ({cause}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise CoordinatorUnavailableError(
                f"Redis coordinator {self.namespace!r} unavailable: {type(exc).__name__}: {exc}"
            ) from exc

    async def _flush(self) -> None:
        """Send what is queued, one pipeline at a time, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            try:
                results = await self._pipeline([(script, args) for script, args, _ in batch])
            except (RedisError, OSError) as exc:
                results = [exc] * len(batch)
            except BaseException as exc:  # cancelled (aclose): the callers must not hang
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(ConnectionError("the coordinator was closed"))
                raise exc from None
            for (_, _, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _pipeline(self, calls: list[tuple[Any, list[Any]]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, args in calls:
            pipe.evalsha(script.sha, 0, *args)
        results: list[Any] = list(await pipe.execute(raise_on_error=False))
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # the server lost its script cache (a restart, SCRIPT FLUSH): load, rerun
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                await self._client.script_load(script.script)
            again = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _checked(self, session_id: str, token: int, script: Any, *args: object) -> int:
        status = int(await self._run(script, session_id, str(token), *args))
        if status < 0:
            raise LeaseLostError(session_id, token)
        return status

    async def mark_active(self, session_id: str, anchor: FleetCursor | None = None) -> None:
        """See :meth:`Coordinator.mark_active`."""
        has_anchor = "0" if anchor is None else "1"
        await self._run(self._mark_active, session_id, has_anchor, *_cursor_args(anchor)[:4])

    async def claimable(self, limit: int | None = None) -> list[str]:
        """See :meth:`Coordinator.claimable`."""
        reply = await self._run(self._claimable, -1 if limit is None else limit)
        return [_text(x) for x in reply]

    async def claim(
        self, worker_id: str, *, ttl: float, limit: int = 1, max_sessions: int | None = None
    ) -> list[Claim]:
        """See :meth:`Coordinator.claim`."""
        reply = await self._run(
            self._claim, worker_id, _ms(ttl), limit, -1 if max_sessions is None else max_sessions
        )
        claims = []
        for row in reply:
            sid, token, *position, pending = (_text(x) for x in row)
            claims.append(Claim(sid, int(token), *_position(position), pending == "1"))
        return claims

    async def renew(self, session_id: str, token: int, *, ttl: float) -> None:
        """See :meth:`Coordinator.renew`."""
        if await self.renew_many({session_id: token}, ttl=ttl):
            raise LeaseLostError(session_id, token)

    async def renew_many(self, tokens: Mapping[str, int], *, ttl: float) -> set[str]:
        """See :meth:`Coordinator.renew_many`."""
        ttl_ms = _ms(ttl)
        if not tokens:
            return set()
        pairs = [x for sid, token in tokens.items() for x in (sid, str(token))]
        return {_text(x) for x in await self._run(self._renew, ttl_ms, *pairs)}

    async def begin_handler(self, session_id: str, token: int, event_id: str) -> None:
        """See :meth:`Coordinator.begin_handler`."""
        await self._checked(session_id, token, self._begin, event_id)

    async def commit(self, session_id: str, token: int, cursor: FleetCursor) -> bool:
        """See :meth:`Coordinator.commit`."""
        return await self._checked(session_id, token, self._commit, *_commit_args(cursor)) == 1

    async def advance(
        self, session_id: str, token: int, cursor: FleetCursor, next_event_id: str
    ) -> bool:
        """See :meth:`Coordinator.advance`."""
        args = (*_commit_args(cursor), next_event_id)
        return await self._checked(session_id, token, self._commit, *args) == 1

    async def restore(
        self,
        session_id: str,
        token: int,
        worker_id: str,
        *,
        ttl: float,
        cursor: FleetCursor | None,
        inflight: InFlight | None = None,
    ) -> bool:
        """See :meth:`Coordinator.restore`."""
        c_args = _cursor_args(cursor)
        f_id = inflight.event_id if inflight is not None else ""
        reply = await self._run(
            self._restore, session_id, str(token), worker_id, _ms(ttl), *c_args, f_id
        )
        return int(reply) == 1

    async def release(self, session_id: str, token: int) -> bool:
        """See :meth:`Coordinator.release`."""
        return await self._checked(session_id, token, self._let_go, "1") == 1

    async def hand_off(self, session_id: str, token: int) -> None:
        """See :meth:`Coordinator.hand_off`."""
        await self._checked(session_id, token, self._let_go, "0")

    async def _tool_op(
        self,
        session_id: str,
        token: int,
        tool_use_id: str,
        script: Any,
        *extra: object,
    ) -> ToolRecord:
        reply = await self._run(
            script, session_id, str(token), tool_use_id, self._ledger_ms, *extra
        )
        if int(reply[0]) < 0:
            raise LeaseLostError(session_id, token)
        record = _tool(tool_use_id, reply)
        if record is None:  # pragma: no cover - the scripts always write one first
            raise CoordinatorUnavailableError(f"tool record {tool_use_id!r} vanished")
        return record

    async def claim_tool(self, session_id: str, token: int, tool_use_id: str) -> ToolRecord:
        """See :meth:`Coordinator.claim_tool`."""
        return await self._tool_op(session_id, token, tool_use_id, self._tool_claim)

    async def store_tool_result(
        self, session_id: str, token: int, tool_use_id: str, result: str
    ) -> ToolRecord:
        """See :meth:`Coordinator.store_tool_result`."""
        return await self._tool_op(session_id, token, tool_use_id, self._tool_store, result)

    async def mark_tool_posted(self, session_id: str, tool_use_id: str) -> None:
        """See :meth:`Coordinator.mark_tool_posted`."""
        await self._run(self._tool_posted, session_id, tool_use_id, self._ledger_ms)

    async def tool_record(self, session_id: str, tool_use_id: str) -> ToolRecord | None:
        """See :meth:`Coordinator.tool_record`."""
        return _tool(tool_use_id, await self._run(self._tool_get, session_id, tool_use_id))

    async def announce(
        self, worker_id: str, *, ttl: float, max_sessions: int | None = None, instance: str = ""
    ) -> bool:
        """See :meth:`Coordinator.announce`."""
        limit = "" if max_sessions is None else str(max_sessions)
        status = int(await self._run(self._announce, worker_id, _ms(ttl), limit, instance))
        if status == _OLD_LAYOUT_ALIVE:
            raise ConfigurationError(
                f"Redis coordinator {self.namespace!r}: workers of an earlier qoder_async "
                "(the key layout before v2) are still alive in this namespace; stop them "
                "before starting this version (their active sessions then move over), or "
                "give this fleet another namespace"
            )
        return status == 1

    async def retire(self, worker_id: str, instance: str = "") -> None:
        """See :meth:`Coordinator.retire`."""
        await self._run(self._retire, worker_id, instance)

    async def workers(self) -> list[WorkerLoad]:
        """See :meth:`Coordinator.workers`."""
        loads = []
        for row in await self._run(self._workers):
            wid, sessions, limit = (_text(x) for x in row)
            loads.append(WorkerLoad(wid, int(sessions), int(limit) if limit else None))
        return sorted(loads, key=lambda w: w.worker_id)

    async def inspect(self, session_id: str) -> SessionInfo | None:
        """See :meth:`Coordinator.inspect`."""
        reply = [_text(x) for x in await self._run(self._inspect, session_id)]
        if not reply:
            return None
        active, holder, leased, token = reply[:4]
        cursor, inflight = _position(reply[4:10])
        return SessionInfo(
            session_id=session_id,
            active=active == "1",
            holder=holder,
            leased=leased == "1",
            token=int(token),
            cursor=cursor,
            inflight=inflight,
            pending=tuple(sorted(reply[10:])),
        )

    def watch(self) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """See :meth:`Coordinator.watch`.

        While anybody watches, the coordinator holds one subscription to the
        ``{ns}:work`` channel (a connection of its pool), on which the scripts
        publish when they make a session claimable, at most once per
        :data:`WORK_WINDOW` (``{ns}:work:quiet`` marks a window); after a dropped connection
        it subscribes again with backoff and sets every watcher's event once
        (notifications sent meanwhile are lost: workers poll anyway).
        """
        return self._watching()

    @contextlib.asynccontextmanager
    async def _watching(self) -> AsyncIterator[asyncio.Event]:
        async with self._watchers.watching() as event:
            if self._subscriber is None or self._subscriber.done():
                self._subscriber = asyncio.get_running_loop().create_task(
                    self._subscribe(), name=f"qoder_async {self!r} work channel"
                )
            try:
                yield event
            finally:
                if self._watchers.events == {event}:  # the last watcher leaves
                    await self._stop_subscriber()

    async def _subscribe(self) -> None:
        """Set the watchers' events on every notification, until cancelled."""
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.prefix + "work")
                failures = 0
                self._watchers.notify()  # what was published while not subscribed is lost
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_WORK_READ_TIMEOUT
                    )
                    if message is not None:
                        self._watchers.notify()
            except Exception as exc:  # a lost connection (or anything else): only hints are lost
                failures += 1
                if failures == 1:
                    logger.warning(
                        "%r: the work channel failed (%s: %s); workers poll until it is back",
                        self,
                        type(exc).__name__,
                        exc,
                    )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(_WORK_RESUBSCRIBE.delay(failures - 1, random.random()))

    async def _stop_subscriber(self) -> None:
        task, self._subscriber = self._subscriber, None
        if task is not None and not task.done():
            await cancel_and_wait(task)

    async def aclose(self) -> None:
        """Close the client if this coordinator created it (``from_url``)."""
        await self._stop_subscriber()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            await cancel_and_wait(flusher)
        if self._owns_client:
            await self._client.aclose()
