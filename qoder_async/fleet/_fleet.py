"""Many workers, one follower per session: :class:`Fleet`.

Front ends post messages with :meth:`Fleet.send`; workers run
:meth:`Fleet.serve`, which claims active sessions, follows each from its
committed cursor and calls your handler once per stored event, in stored
order. Workers share their state through a coordinator
(:class:`MemoryCoordinator` in one process, :class:`RedisCoordinator` across
processes and hosts; the coordinator contract and its Redis keys are in
``qoder_async.fleet._coordinators``).

The fleet is a thin driver. Every decision is the sans-I/O core's
(``qoder_async.fleet._lease``): whether a renewal is due and whether a handler may
start (``Lease``, ``Follow.gate``), what to skip and what is a redelivery
(``Follow``), how many sessions to claim (``Balancer``), how long to wait out
an outage (``OutageBackoff``), what to do with a tool call (``tool_action``).
This module moves bytes and calls between them. Its rules:

============================================  ================================================
situation                                     what the worker does
============================================  ================================================
``serve()`` polls (every ``poll_interval``,   announces itself, then claims its share of the
and at once when the coordinator says a       first 256 claimable sessions (``Balancer``: new
session became claimable: ``watch()``)        work goes to the least loaded worker), never
                                              holding more than ``max_sessions``; when it
                                              saw 256 and claimed some, it polls again at
                                              once (a poll costs the same however many
                                              sessions are active)
another live process announces the same       this one claims nothing; if the other's record
``worker_id``                                 is still live a ``lease_ttl`` later, ``serve()``
                                              raises ``ConfigurationError`` (a retiring twin
                                              never deletes the live one's record)
a permanent coordinator error                 ``serve()`` raises ``ConfigurationError`` naming
(``ConfigurationError``: Redis AUTH, NOAUTH,  the cause, at once (only what can heal is
NOPERM, a WRONGTYPE key in the namespace)     retried: connection refused, timeouts,
                                              LOADING, failover)
a claim is answered                           a ``Lease`` counted from when the claim was
                                              *sent*; a task follows the session
                                              (``Follow``): from the start, just before its
                                              anchor message, or after its committed cursor
the claimed cursor ended a turn               release at once; refused (something pending):
                                              follow
renewals                                      each lease is renewed a third of ``lease_ttl``
                                              after its last confirmation; all that are due
                                              go in one ``renew_many``; a failed renewal is
                                              retried with backoff
a renewal, commit or in-flight record is      ``restore`` first: if the coordinator had no
refused                                       record of the session (Redis flushed, restarted
                                              without its data) it is registered again at
                                              this worker's committed cursor and in-flight
                                              event, and the call is made again: nothing
                                              between is skipped, and a later send finds the
                                              cursor (it does not anchor past the gap)
the refusal stands (stale token), or this     the lease is LOST: the session's task is
worker claims again a session whose lease of  cancelled at once (a running handler too); no
its own lapsed                                commit, no hand-off
an event arrives                              identity is the event id and the stored order,
                                              never ``processed_at``: skipped only if this
                                              follower delivered its id, or it is a replay
                                              older than the cursor at the start of a
                                              connection (``Follow``); a live event older
                                              than the one before it is delivered. Otherwise
                                              the gate is checked, ``begin_handler`` records
                                              it in flight, the gate is checked again and
                                              the handler starts
the gate says WAIT (the lease is past its     no handler starts; the task waits for the
local deadline: a pause, an outage)           renewal that confirms the lease, or loses it
the handler raises (``asyncio.CancelledError``  logged at ERROR; the event counts as delivered
included, unless the fleet itself cancelled   (a poison event must not wedge its session).
the handler: a lost lease, shutdown)          A cancellation the fleet did not cause is the
                                              handler's failure, not a crash
following a session fails (a bug)             logged; the lease is kept for a backoff that
                                              grows with each failure in a row of that
                                              session (capped at ``fatal_cooldown``), then
                                              handed off: no hot redelivery loop
a ``requires_action`` idle, with ``tools=``   answered from when it is *read*, never behind
                                              a running handler (a handler that sends to its
                                              own session with ``on_busy="wait"`` would wait
                                              on the tool for ever; while it waits, the
                                              stream is read past the 32-event read-ahead
                                              bound so the pause is seen however far ahead
                                              it is), and always before the
                                              idle's own handler: every named tool use with
                                              a handler goes through the ledger
                                              (``tool_action``): run once fleet-wide, result
                                              stored, posted (echoing ``session_thread_id``),
                                              marked posted; a worker dying meanwhile has not
                                              called the idle's handler; at most
                                              ``max_concurrent_calls`` tool handlers of the
                                              worker run at once (the lease is checked
                                              when one gets its slot)
the handler (and the tools) finished          commit the event's cursor (``ends_turn`` when it
                                              ended the turn); if the next event has arrived
                                              already, ``advance`` (the commit and the next
                                              in-flight record in one call); if the turn
                                              ended, release: refused (a message is
                                              pending): keep following
the coordinator is unreachable                every call is retried after a capped, jittered
                                              backoff; leases run out locally, so no handler
                                              starts until the coordinator answers again and
                                              confirms them (no split brain)
the stream fails (stalls, resume exhausted,   reopened from the committed cursor after a
bad input)                                    backoff; the lease is kept
the stream fails for good (400/401/403/404),  logged; the lease is kept ``fatal_cooldown``
or the session ended with something pending   seconds (so workers do not bounce it), then
                                              handed off
``stop()``, or SIGTERM while ``serve()``      no more claims; each session stops between two
runs in the main thread (and the application  events: idle ones at once, a running handler
set no SIGTERM handler of its own)            (and the tools of a pause read ahead) finishes,
                                              is committed (never ``advance``: nothing more
                                              is recorded in flight), then the lease is
                                              handed off; handlers still running after
                                              ``shutdown_grace`` are cancelled as below;
                                              the worker retires and ``serve()`` returns
``serve()`` is cancelled, ``aclose()``        running handlers are cancelled (their events
                                              stay in flight: the next owner redelivers
                                              them), every lease is handed off, the worker
                                              retires
============================================  ================================================

Sending (:meth:`Fleet.send`, from any process, serving or not):

============================================  ================================================
situation                                     what ``send`` does
============================================  ================================================
every send                                    one ``Idempotency-Key`` (yours or a fresh one)
                                              for every HTTP retry: the message is stored once
409 busy                                      raise (``on_busy="raise"``) or wait with backoff
                                              and retry under the same key (``"wait"``)
the 202 names the created ``user.message``    ``mark_active`` with it as the *anchor*: the
                                              session's cursor starts just before it, only if
                                              the session has no cursor (a send never moves a
                                              committed cursor); it is *pending* until a
                                              commit covers it
the 202 is ``"data": []``                     the stored message is looked up in the newest
                                              100 events (one page); not found: the session
                                              is marked active without an anchor (logged)
the coordinator is unreachable                retried with backoff for ``outage_timeout``
                                              seconds, then ``CoordinatorUnavailableError``
                                              (the message *is* stored: send again with the
                                              same ``idempotency_key``)
============================================  ================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import os
import platform
import random
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias, TypeGuard, TypeVar, cast

from attrs import frozen

from qoder_async._api.resources import find_sent, send_retrying_busy
from qoder_async._api.tools import (
    Tools,
    call_handler,
    call_slots,
    error_result,
    results_key,
    tool_handlers,
    tool_result,
)
from qoder_async._core.backoff import Backoff
from qoder_async._core.convert import unstructure_event
from qoder_async._core.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    ConfigurationError,
    CoordinatorUnavailableError,
    InternalServerError,
    LeaseLostError,
    QoderError,
    RateLimitError,
    StreamError,
    ToolResultsNotAwaitedError,
)
from qoder_async._core.models import (
    Accepted,
    AgentCustomToolUse,
    Content,
    Cursor,
    Event,
    PreviewDelta,
    PreviewStart,
    SessionDeletedEvent,
    SessionStatusIdle,
    SessionStatusTerminated,
    UserCustomToolResult,
    as_events,
    new_idempotency_key,
)
from qoder_async._core.sse import PREVIEW_CLASSES
from qoder_async._core.turns import ToolCall, ends_turn
from qoder_async._shell.eventstream import (
    DEFAULT_MAX_STALLS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
)
from qoder_async._shell.tasks import cancel_and_wait

from ._coordinators import WORK_WINDOW, Coordinator, MemoryCoordinator
from ._lease import (
    Balancer,
    Claim,
    FleetCursor,
    Follow,
    Gate,
    InFlight,
    Lease,
    OutageBackoff,
    ToolAction,
    ToolRecord,
    ToolState,
    tool_action,
)

if TYPE_CHECKING:
    from qoder_async._client import QoderClient
    from qoder_async._core.models import OutboundEvent
    from qoder_async._shell.eventstream import EventStream
    from qoder_async._shell.pagination import AsyncPaginator

__all__ = ["Delivery", "Fleet", "Handler"]

logger = logging.getLogger("qoder_async")

_T = TypeVar("_T")
_ENDS_STREAM = (SessionStatusTerminated, SessionDeletedEvent)
_TRANSIENT = (APIConnectionError, RateLimitError, InternalServerError)
_STREAM_BACKOFF = Backoff(initial=0.5, maximum=10.0)
_LOOKUP_LIMIT = 1000  # events scanned (newest first) to find a tool use
_CLAIM_BATCH = 256
"""The most claimable sessions one claim round looks at (and shares out): a round
costs the coordinator the same however many sessions are active; when it saw a
full batch, the next round runs at once."""
_ORPHANED_TEXT = (
    "the fleet worker running this tool stopped before it finished; its outcome is unknown "
    "and it was not run again"
)


@frozen
class Delivery:
    """One stored event handed to a fleet's handler.

    ``event`` is the typed event (never a preview); ``turn_id`` its turn id
    (``None`` when the server sends none). ``redelivered`` is ``True`` when an
    earlier owner of the session may have run the handler for this very event
    (it was in flight when that owner died or lost the session): use
    ``event.id`` as the idempotency key of the handler's side effects.
    ``token`` is the fencing token of the lease it was delivered under (it
    grows with every claim of the session).
    """

    session_id: str
    event: Event
    turn_id: str | None
    redelivered: bool
    token: int


Handler: TypeAlias = Callable[[Delivery], Awaitable[None] | None]
"""A fleet handler: ``async def`` or plain ``def handler(delivery) -> None``."""


_HANDLING: contextvars.ContextVar[_Runner | None] = contextvars.ContextVar(
    "qoder_async_fleet_handling", default=None
)
"""The followed session whose handler runs in this context (what a send from it may lift)."""


class _Runner:
    """The driver's state for one followed session (the decisions are ``Follow``'s)."""

    __slots__ = (
        "ahead",
        "answering",
        "begun",
        "changed",
        "delivering",
        "follow",
        "inflight",
        "outage",
        "stream_failures",
        "task",
        "uses",
    )

    task: asyncio.Task[None]  # the follower (set by ``Fleet._follow`` as it makes the runner)

    def __init__(self, follow: Follow, outage: OutageBackoff) -> None:
        self.follow = follow
        self.outage = outage
        self.changed = asyncio.Event()  # set after each renewal answer for this lease
        self.uses: dict[str, AgentCustomToolUse] = {}  # tool uses seen in this turn
        self.stream_failures = 0
        self.begun: str | None = None  # the event an ``advance`` already recorded in flight
        self.inflight: str | None = None  # recorded in flight and not committed yet
        # requires_action pauses whose tools are being answered (from when they were read)
        self.answering: dict[str, asyncio.Task[bool]] = {}
        self.delivering = False  # between reading an event and committing it
        self.ahead: _Ahead | None = None  # the stream being read, while one is

    def lost(self) -> None:
        """The lease is no longer ours: no more deliveries, the task stops at once."""
        self.follow.lease.lost()
        self.task.cancel()


class _Ahead:
    """A session's stream, read by a task of its own into a small buffer.

    The driver sees whether the next event has already arrived (:meth:`peek`);
    then one ``advance`` commits this event and records the next in flight
    (one round trip per event while events queue up, instead of two). The
    buffer is bounded: a slow handler slows the reading down, as before.
    """

    __slots__ = (
        "_buffer",
        "_done",
        "_error",
        "_lifted",
        "_more",
        "_on_read",
        "_room",
        "_size",
        "_task",
    )

    def __init__(
        self, stream: EventStream, on_read: Callable[[Event], None], size: int = 32
    ) -> None:
        self._on_read = on_read  # sees each event as it is read (before it is delivered)
        self._buffer: deque[Event] = deque()
        self._size = size
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._done = False
        self._error: Exception | None = None
        self._lifted = 0  # > 0: read on whatever the buffer holds (see lifted())
        self._task = asyncio.get_running_loop().create_task(
            self._read(stream), name=f"qoder_async fleet reader {stream.session_id}"
        )

    async def _read(self, stream: EventStream) -> None:
        try:
            async for ev in stream:
                self._buffer.append(ev)
                self._more.set()
                self._on_read(ev)
                while len(self._buffer) >= self._size and not self._lifted:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # raised to the driver by get(), after what came before it
            self._error = exc
        finally:
            self._done = True
            self._more.set()

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        """Read on past the bound meanwhile: the handler being run waits on this session
        (a send with ``on_busy="wait"``), so the pause it waits behind must be read
        to be answered, however many events come first."""
        self._lifted += 1
        self._room.set()
        try:
            yield
        finally:
            self._lifted -= 1

    def peek(self) -> Event | None:
        """The next event if it has arrived already, else None (never waits)."""
        return self._buffer[0] if self._buffer else None

    async def get(self) -> Event | None:
        """The next event; None once the stream ended; the stream's error, if it failed."""
        while not self._buffer:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._more.clear()
            await self._more.wait()
        ev = self._buffer.popleft()
        self._room.set()
        return ev

    async def aclose(self) -> None:
        """Stop reading."""
        await cancel_and_wait(self._task)


_SIGTERM_FLEETS: set[Fleet] = set()
_SIGTERM_INSTALLED: list[asyncio.AbstractEventLoop] = []


def _on_sigterm(fleet: Fleet, serving: bool) -> None:
    """SIGTERM calls ``stop()`` on every fleet serving in the main thread, unless the
    application handles SIGTERM itself (its handler is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    if serving:
        _SIGTERM_FLEETS.add(fleet)
        if _SIGTERM_INSTALLED or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        try:
            loop.add_signal_handler(signal.SIGTERM, _stop_all)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows)
            return
        _SIGTERM_INSTALLED.append(loop)
        return
    _SIGTERM_FLEETS.discard(fleet)
    if not _SIGTERM_FLEETS and _SIGTERM_INSTALLED:
        installed = _SIGTERM_INSTALLED.pop()
        if not installed.is_closed():
            installed.remove_signal_handler(signal.SIGTERM)


def _stop_all() -> None:
    logger.info("SIGTERM: stopping %d fleet(s)", len(_SIGTERM_FLEETS))
    for fleet in list(_SIGTERM_FLEETS):
        fleet.stop()


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait for them all to end, whatever each ends with."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _default_worker_id() -> str:
    return f"{platform.node() or 'worker'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _requires_action(ev: Event) -> TypeGuard[SessionStatusIdle]:
    return isinstance(ev, SessionStatusIdle) and not ev.stop_reason.ends_turn


class Fleet:
    """Many worker processes sharing a bot's sessions: one follower per session.

    ``Fleet(client, coordinator, worker_id="w1", lease_ttl=10.0, tools=...)``;
    register the handler with ``@fleet.handler``, post with :meth:`send` (from
    any process) and run :meth:`serve` in each worker. See the module's rule
    tables for what happens when.

    ``coordinator``: shared state (:class:`MemoryCoordinator` when omitted: one
    process). ``lease_ttl``: seconds a silent worker keeps its sessions (the
    failover time; renewals go every third of it). ``tools``: custom tool
    handlers (as in ``session.send(tools=...)``), run at most once fleet-wide;
    ``max_concurrent_calls``: the most tool handlers this worker runs at once,
    across its sessions (``None``: no cap). ``max_sessions``: the most sessions
    this worker follows at once (unbounded by default). ``poll_interval``: how
    often it looks for work. ``shutdown_grace``: seconds running handlers may
    take to finish after :meth:`stop` (or SIGTERM). ``stall_timeout``, ``max_stalls`` and
    ``read_timeout`` go to each session's stream. The coordinator and the
    client are borrowed: closing the fleet closes neither. ``delivered`` and
    ``redelivered`` count the handler calls made by this worker.
    """

    def __init__(
        self,
        client: QoderClient,
        coordinator: Coordinator | None = None,
        *,
        worker_id: str | None = None,
        lease_ttl: float = 10.0,
        tools: Tools | None = None,
        max_concurrent_calls: int | None = None,
        max_sessions: int | None = None,
        poll_interval: float = 0.1,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        fatal_cooldown: float = 30.0,
        outage_timeout: float | None = 30.0,
        shutdown_grace: float = 30.0,
    ) -> None:
        if not lease_ttl > 0:
            raise ConfigurationError(f"lease_ttl must be positive, got {lease_ttl!r}")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, got {poll_interval!r}")
        if not shutdown_grace >= 0:
            raise ConfigurationError(f"shutdown_grace must be >= 0, got {shutdown_grace!r}")
        self._client = client
        self.coordinator: Coordinator = (
            coordinator if coordinator is not None else MemoryCoordinator()
        )
        self.worker_id = worker_id or _default_worker_id()
        self._balancer = Balancer(self.worker_id, max_sessions=max_sessions)  # checks it
        self.lease_ttl = lease_ttl
        self.max_sessions = max_sessions
        self.poll_interval = poll_interval
        self.fatal_cooldown = fatal_cooldown
        self.outage_timeout = outage_timeout
        self.shutdown_grace = shutdown_grace
        self._stopping = asyncio.Event()  # stop(): finish what runs, hand off, return
        self._tools = tool_handlers(tools)
        self._slots = call_slots(max_concurrent_calls)
        self._stream_options: dict[str, Any] = {
            "stall_timeout": stall_timeout,
            "max_stalls": max_stalls,
            "read_timeout": read_timeout,
        }
        # Time and chance, replaced by tests only (not constructor options).
        self._clock: Callable[[], float] = time.monotonic
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._rand: Callable[[], float] = random.random
        self._tick = min(lease_ttl / 10, 1.0)
        self._handler: Handler | None = None
        self._runners: dict[str, _Runner] = {}
        self._serve_task: asyncio.Task[None] | None = None
        self._announced_at: float | None = None
        self._instance = uuid.uuid4().hex  # this process's claim on ``worker_id``
        self._twin_since: float | None = None  # when a live twin first refused our record
        self._fatal: asyncio.Future[None] | None = None  # set by a ConfigurationError
        self._crashes: dict[str, int] = {}  # followers of a session that failed in a row
        self.delivered = 0
        self.redelivered = 0

    def __repr__(self) -> str:
        return f"<Fleet {self.worker_id} sessions={len(self._runners)} {self.coordinator!r}>"

    # ------------------------------------------------------------------ public surface

    @property
    def sessions(self) -> frozenset[str]:
        """The sessions this worker follows now."""
        return frozenset(self._runners)

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running."""
        return self._serve_task is not None

    def handler(self, fn: Handler) -> Handler:
        """Register the handler called with a :class:`Delivery` for every event (a decorator).

        Async or plain functions; one per fleet. It runs once per stored event
        of each followed session, in stored order, one event at a time per
        session (sessions run concurrently). An exception it raises (an
        ``asyncio.CancelledError`` the fleet did not cause included) is logged
        and the event counts as delivered. It may ``await fleet.send(...)`` to
        its own session, ``on_busy="wait"`` included: the session's tool calls
        are answered meanwhile.
        """
        if self._handler is not None:
            raise ConfigurationError("this fleet already has a handler")
        self._handler = fn
        return fn

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stop(self) -> None:
        """Ask :meth:`serve` to stop gracefully (from any task, or a signal handler).

        It claims nothing more, lets running handlers (and their tools) finish
        for up to ``shutdown_grace`` seconds, commits them, hands every lease
        off (another worker claims those sessions at once, not a ``lease_ttl``
        later) and returns. Handlers still running after the grace are
        cancelled; their events stay in flight and the next owner redelivers
        them (``redelivered=True``). Called before :meth:`serve`, that
        ``serve()`` returns at once.
        """
        self._stopping.set()

    async def aclose(self) -> None:
        """Stop serving now (if :meth:`serve` runs in another task): running handlers
        are cancelled, every lease is handed off. :meth:`stop` is the graceful way.

        The client and the coordinator stay open (they are borrowed).
        """
        task = self._serve_task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task)

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        session_id: str,
        content: Content | OutboundEvent | Sequence[OutboundEvent],
        *,
        idempotency_key: str | None = None,
        on_busy: Literal["raise", "wait"] = "raise",
        busy_timeout: float | None = 600.0,
    ) -> Accepted:
        """Post a message (text, blocks or events) and make the session active fleet-wide.

        Any process may call it, serving or not: a worker of the fleet claims
        the session and delivers its events from the committed cursor (for a
        session without one: from this send's own ``user.message``). One
        ``Idempotency-Key`` (yours or a fresh one) covers every retry, so the
        message is stored once. ``on_busy``: ``"raise"``
        (:class:`SessionBusyError`) or ``"wait"`` (retry with backoff until the
        running turn ends, up to ``busy_timeout`` seconds). Returns the 202
        handle. If the coordinator stays unreachable after the message was
        stored, :class:`CoordinatorUnavailableError` is raised: send again
        with the same ``idempotency_key`` (the message is not stored twice).
        """
        if on_busy not in ("raise", "wait"):
            raise ConfigurationError("on_busy must be 'raise' or 'wait'")
        events = as_events(content)
        key = idempotency_key or new_idempotency_key()
        sessions_events = self._client.sessions.events

        async def pause(wait: float, attempt: int) -> bool:
            await self._sleep(wait)
            return True

        # A handler waiting to send to its own session: the pause the running turn
        # waits on must be read (and its fleet tools answered) however far ahead it is.
        handling = _HANDLING.get()
        ahead = None
        if on_busy == "wait" and handling is not None and handling.follow.session_id == session_id:
            ahead = handling.ahead
        with ahead.lifted() if ahead is not None else contextlib.nullcontext():
            accepted = await send_retrying_busy(
                lambda: sessions_events.send(session_id, events, idempotency_key=key),
                on_busy=on_busy,
                busy_timeout=busy_timeout,
                clock=self._clock,
                pause=pause,
            )
        created = accepted.anchor
        if created is None:
            created = await find_sent(sessions_events, session_id, events)
            if created is None:
                logger.warning(
                    "fleet: the send to %s was stored but its answer names no created event "
                    "and it is not in the recent history; the session is followed from its "
                    "committed cursor (or its start)",
                    session_id,
                )
        anchor = None
        if created is not None and created.id:
            anchor = FleetCursor(created.id, created.processed_at, inclusive=True)
        await self._mark_active(session_id, anchor, key)
        return accepted

    async def _mark_active(self, session_id: str, anchor: FleetCursor | None, key: str) -> None:
        outage = OutageBackoff(clock=self._clock, rand=self._rand)
        while True:
            try:
                await self.coordinator.mark_active(session_id, anchor)
                return
            except CoordinatorUnavailableError as exc:
                delay = outage.failed()
                limit = self.outage_timeout
                if limit is not None and outage.down_for + delay > limit:
                    exc.add_note(
                        f"the message to {session_id} was stored; send it again with "
                        f"idempotency_key={key!r} once the coordinator is back"
                    )
                    raise
                await self._sleep(delay)

    # ------------------------------------------------------------------ serving

    async def serve(self) -> None:
        """Claim, follow and deliver until :meth:`stop` (or SIGTERM), or cancelled.

        After :meth:`stop` it returns once running handlers finished (within
        ``shutdown_grace``) and every lease was handed off. While it runs in the
        main thread, SIGTERM calls :meth:`stop` (unless the application set its
        own SIGTERM handler); SIGTERM's handling is restored when it returns.
        Cancelled (or :meth:`aclose`), it stops at once: handlers are cancelled,
        leases handed off. Raises :class:`ConfigurationError` when no handler is
        registered.
        """
        if self._handler is None:
            raise ConfigurationError("register a handler with @fleet.handler before serve()")
        if self._serve_task is not None:
            raise ConfigurationError("this fleet is already serving")
        self._serve_task = asyncio.current_task()
        self._fatal = asyncio.get_running_loop().create_future()
        _on_sigterm(self, True)
        try:
            async with self.coordinator.watch() as work, asyncio.TaskGroup() as group:
                claims = group.create_task(
                    self._claim_loop(work), name=f"qoder_async fleet claims {self}"
                )
                others = (
                    group.create_task(self._renew_loop(), name=f"qoder_async renewals {self}"),
                    group.create_task(self._until_fatal(), name=f"qoder_async guard {self}"),
                )
                group.create_task(
                    self._until_stopped(claims, others), name=f"qoder_async fleet stop {self}"
                )
        except BaseExceptionGroup as group_error:
            fatal: BaseException | None = group_error.subgroup(ConfigurationError)
            if fatal is not None:
                while isinstance(fatal, BaseExceptionGroup):  # the first one, however nested
                    fatal = fatal.exceptions[0]
                raise fatal from None  # permanent: the caller must fix the configuration
            raise
        finally:
            _on_sigterm(self, False)
            await self._shutdown()
            self._serve_task = None
            self._fatal = None
            self._stopping.clear()

    async def _until_stopped(
        self, claims: asyncio.Task[None], others: tuple[asyncio.Task[None], ...]
    ) -> None:
        """After :meth:`stop`: no more claims; each session stops between two events
        (idle ones at once), running handlers get ``shutdown_grace`` seconds; then
        ``serve`` ends (its shutdown hands off what is left and retires)."""
        await self._stopping.wait()
        await claims  # it ends after its round: a claim in flight is never abandoned
        logger.info(
            "fleet %s: stopping; %d session(s), up to %.1fs for running handlers",
            self.worker_id,
            len(self._runners),
            self.shutdown_grace,
        )
        for runner in list(self._runners.values()):
            if not runner.delivering:
                runner.task.cancel()  # nothing runs: hand it off now
        tasks = [r.task for r in self._runners.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.shutdown_grace)
            if late:
                logger.warning(
                    "fleet %s: %d handler(s) still running after %.1fs; cancelling them "
                    "(their events will be redelivered)",
                    self.worker_id,
                    len(late),
                    self.shutdown_grace,
                )
        for task in others:
            task.cancel()

    async def _until_fatal(self) -> None:
        """Raise the first ConfigurationError a session's follower met (ends ``serve``)."""
        assert self._fatal is not None
        await self._fatal

    def _failed_for_good(self, exc: ConfigurationError) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(exc)

    async def _shutdown(self) -> None:
        await _cancel_all([r.task for r in self._runners.values()])
        with contextlib.suppress(QoderError, TimeoutError):
            async with asyncio.timeout(self.lease_ttl):
                await self.coordinator.retire(self.worker_id, self._instance)
        self._announced_at = None
        self._twin_since = None

    async def _claim_loop(self, work: asyncio.Event) -> None:
        outage = OutageBackoff(clock=self._clock, rand=self._rand)
        while not self._stopping.is_set():
            work.clear()  # set again by whatever becomes claimable from now on
            try:
                claims, sent_at, more = await self._claim_round()
            except CoordinatorUnavailableError as exc:
                delay = outage.failed()
                if outage.attempts == 1:
                    logger.warning("fleet %s: coordinator unavailable (%s)", self.worker_id, exc)
                await self._until_work(None, delay)
                continue
            if outage.down:
                logger.warning(
                    "fleet %s: coordinator back after %.1fs", self.worker_id, outage.down_for
                )
            outage.recovered()
            for claim in claims:
                self._follow(claim, sent_at)
            if not (more and claims):  # a full batch that we took part of: look again at once
                await self._until_work(work, self.poll_interval)

    async def _until_work(self, work: asyncio.Event | None, wait: float) -> None:
        """Wait ``wait`` seconds, or less when the coordinator says work arrived
        (then ``WORK_WINDOW`` more, so a burst of sends is claimed in one round),
        or :meth:`stop` was called."""
        if work is None or not work.is_set():
            waits = {
                asyncio.ensure_future(self._sleep(wait)),
                asyncio.ensure_future(self._stopping.wait()),
            }
            if work is not None:
                waits.add(asyncio.ensure_future(work.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_all(list(waits))
        if work is not None and work.is_set() and not self._stopping.is_set():
            await self._sleep(WORK_WINDOW)

    async def _claim_round(self) -> tuple[list[Claim], float, bool]:
        """Announce (every third of a lease), then claim this worker's share of the
        first ``_CLAIM_BATCH`` claimable sessions: (claims, when the claim was
        sent, whether the batch was full)."""
        coordinator = self.coordinator
        now = self._clock()
        if self._announced_at is None or now - self._announced_at >= self.lease_ttl / 3:
            announced = await coordinator.announce(
                self.worker_id,
                ttl=self.lease_ttl,
                max_sessions=self.max_sessions,
                instance=self._instance,
            )
            if announced is False:  # (a coordinator answering None knows no instances)
                self._twin(now)
                return [], now, False
            self._announced_at = now
            self._twin_since = None
        waiting = await coordinator.claimable(_CLAIM_BATCH)
        held = len(self._runners)
        if not waiting:
            self._balancer.quota(held, (), 0)
            return [], now, False
        more = len(waiting) >= _CLAIM_BATCH
        wanted = self._balancer.quota(held, await coordinator.workers(), len(waiting))
        if wanted <= 0:
            return [], now, more
        sent_at = self._clock()
        claims = await coordinator.claim(
            self.worker_id, ttl=self.lease_ttl, limit=wanted, max_sessions=self.max_sessions
        )
        return claims, sent_at, more

    def _twin(self, now: float) -> None:
        """Another live process announces our ``worker_id``: wait a lease for its record
        to lapse (a predecessor that died), then refuse to run as its twin."""
        if self._twin_since is None:
            self._twin_since = now
            logger.warning(
                "fleet %s: another live process runs with this worker_id; claiming nothing "
                "until its record lapses (up to %.1fs)",
                self.worker_id,
                self.lease_ttl,
            )
        elif now - self._twin_since >= self.lease_ttl:
            raise ConfigurationError(
                f"worker_id {self.worker_id!r} is in use by another live process: "
                "give every worker process its own worker_id"
            )

    def _follow(self, claim: Claim, sent_at: float) -> None:
        stale = self._runners.get(claim.session_id)
        if stale is not None:
            # Our own lease lapsed (a pause) and we claimed the session again: the
            # old token is void, so its follower stops like one whose lease was lost.
            stale.lost()
        lease = Lease(
            claim.session_id,
            claim.token,
            ttl=self.lease_ttl,
            claimed_at=sent_at,
            clock=self._clock,
            rand=self._rand,
        )
        runner = _Runner(Follow(claim, lease), OutageBackoff(clock=self._clock, rand=self._rand))
        runner.task = asyncio.get_running_loop().create_task(
            self._run(runner), name=f"qoder_async fleet {claim.session_id}"
        )
        self._runners[claim.session_id] = runner

    # ------------------------------------------------------------------ renewals

    async def _renew_loop(self) -> None:
        while True:
            live = [r for r in self._runners.values() if not r.follow.lease.done]
            due = [r for r in live if r.follow.lease.renewal_due()]
            if due:
                await self._renew(due)
            next_at = min((r.follow.lease.next_renewal_at() for r in live), default=float("inf"))
            await self._sleep(min(max(0.0, next_at - self._clock()), self._tick))

    async def _renew(self, due: list[_Runner]) -> None:
        sent = {r: r.follow.lease.renewal_started() for r in due}
        tokens = {r.follow.session_id: r.follow.token for r in due}
        try:
            lost = await self.coordinator.renew_many(tokens, ttl=self.lease_ttl)
        except CoordinatorUnavailableError as exc:
            for r in due:
                r.follow.lease.renewal_failed(sent[r])
            if any(r.follow.lease.failures == 1 for r in due):
                logger.warning("fleet %s: renewals failed (%s)", self.worker_id, exc)
        else:
            gone = [r for r in due if r.follow.session_id in lost and not r.follow.lease.done]
            back = await asyncio.gather(*(self._restored(r) for r in gone), return_exceptions=True)
            for ok in back:
                if isinstance(ok, BaseException) and not isinstance(
                    ok, CoordinatorUnavailableError
                ):
                    raise ok  # e.g. a ConfigurationError: serve() fails with it
            restored = dict(zip(gone, back, strict=True))
            for r in due:
                lease = r.follow.lease
                ok = restored.get(r, True)  # not lost: renewed
                if lease.done:
                    continue
                if isinstance(ok, BaseException):  # the coordinator went away meanwhile
                    lease.renewal_failed(sent[r])
                elif not ok:
                    r.lost()
                    logger.warning(
                        "fleet %s: lost the lease on %s (token %d); stopped delivering it",
                        self.worker_id,
                        lease.session_id,
                        lease.token,
                    )
                else:
                    lease.renewed(sent[r])
        finally:
            for r in due:
                r.changed.set()

    # ------------------------------------------------------------------ one session

    async def _run(self, runner: _Runner) -> None:
        follow = runner.follow
        self._client._metrics.leases(1)
        try:
            await self._follow_session(runner)
        except LeaseLostError:
            follow.lease.lost()
            logger.info(
                "fleet %s: %s is no longer ours (token %d)",
                self.worker_id,
                follow.session_id,
                follow.token,
            )
        except ConfigurationError as exc:  # permanent (e.g. a Redis ACL): serve() fails
            logger.error("fleet %s: %s", self.worker_id, exc)
            self._failed_for_good(exc)
        except (Exception, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling()):
                raise  # the fleet's own cancellation: lost lease, shutdown
            # A bug, or a cancellation nobody asked for (a tool's own CancelledError):
            # never leave the session stuck with us, nor redeliver it hot.
            crashes = self._crashes.get(follow.session_id, 0) + 1
            self._crashes[follow.session_id] = crashes
            delay = min(_STREAM_BACKOFF.delay(crashes - 1, self._rand()), self.fatal_cooldown)
            logger.exception(
                "fleet %s: following %s failed; handing it off in %.1fs",
                self.worker_id,
                follow.session_id,
                delay,
            )
            await self._sleep(delay)  # the lease is kept meanwhile: no hot redelivery
        finally:
            self._client._metrics.leases(-1)
            await _cancel_all(list(runner.answering.values()))
            if self._runners.get(follow.session_id) is runner:
                del self._runners[follow.session_id]
            if not follow.lease.done:
                follow.lease.released()
                with contextlib.suppress(QoderError, TimeoutError):
                    async with asyncio.timeout(self.lease_ttl):
                        await self.coordinator.hand_off(follow.session_id, follow.token)
                        self._client._metrics.handed_off()

    async def _follow_session(self, runner: _Runner) -> None:
        follow = runner.follow
        if follow.may_release() and await self._release(runner):
            return
        while True:
            ended = False
            try:
                start = await self._start_cursor(runner)
                stream = self._client.sessions.events.stream(
                    follow.session_id, last_event_id=start, **self._stream_options
                )
                async with stream:
                    stream.expect_activity = True
                    follow.connecting()
                    ahead = runner.ahead = _Ahead(stream, lambda ev: self._read_ahead(runner, ev))
                    try:
                        while (ev := await ahead.get()) is not None:
                            if self._stopping.is_set():
                                await self._stopped(runner)
                                return
                            runner.stream_failures = 0
                            if type(ev) in _ENDS_STREAM:
                                ended = True
                            runner.delivering = True
                            try:
                                outcome = await self._deliver(runner, ev, ahead)
                            finally:
                                runner.delivering = False
                            if outcome is None:
                                return  # released
                            if self._stopping.is_set():
                                await self._stopped(runner)
                                return
                            stream.expect_activity = outcome
                    finally:
                        runner.ahead = None
                        await ahead.aclose()
            except _TRANSIENT as exc:
                await self._stream_failed(runner, exc)
                continue
            except APIStatusError as exc:
                logger.error(
                    "fleet %s: cannot follow %s (%s); handing it off in %.0fs",
                    self.worker_id,
                    follow.session_id,
                    exc,
                    self.fatal_cooldown,
                )
                await self._sleep(self.fatal_cooldown)
                return
            except (StreamError, APIError) as exc:
                await self._stream_failed(runner, exc)
                continue
            if ended:
                logger.warning(
                    "fleet %s: %s ended with a message pending; handing it off in %.0fs",
                    self.worker_id,
                    follow.session_id,
                    self.fatal_cooldown,
                )
                await self._sleep(self.fatal_cooldown)
                return
            await self._stream_failed(runner, "the server ended the stream")  # [DONE]

    async def _stopped(self, runner: _Runner) -> None:
        """Graceful stop, between two events: tools answering a pause read ahead finish
        (within the grace), then the caller hands the lease off."""
        await asyncio.gather(*runner.answering.values(), return_exceptions=True)

    async def _stream_failed(self, runner: _Runner, exc: Exception | str) -> None:
        runner.stream_failures += 1
        delay = _STREAM_BACKOFF.delay(runner.stream_failures - 1, self._rand())
        logger.warning(
            "fleet %s: the stream of %s failed (%s); reopening in %.1fs",
            self.worker_id,
            runner.follow.session_id,
            exc,
            delay,
        )
        await self._sleep(delay)

    async def _start_cursor(self, runner: _Runner) -> Cursor | None:
        """Where to open the stream: after the committed cursor, or just before the anchor."""
        follow = runner.follow
        anchor = follow.anchor
        if anchor is None:
            return follow.resume_cursor
        pages = _pages(
            self._client.sessions.events.list(
                follow.session_id, order="asc", before_id=anchor.event_id, limit=1
            )
        )
        try:
            async with contextlib.aclosing(pages) as it:
                async for page in it:
                    before = page[-1] if page else None
                    if (
                        before is None
                        or not before.id
                        or not follow.before_anchor(before.id, before.processed_at)
                    ):
                        return None
                    return Cursor(before.id, before.processed_at)
        except _TRANSIENT:
            raise
        except APIStatusError as exc:  # e.g. 400 "unknown before_id": do without it
            logger.warning(
                "fleet %s: cannot find the event before %s's anchor (%s); following the "
                "session from its start (what is older than the anchor is skipped)",
                self.worker_id,
                follow.session_id,
                exc,
            )
        return None

    async def _deliver(self, runner: _Runner, ev: Event, ahead: _Ahead) -> bool | None:
        """Deliver one event. Returns whether the session is expected to be active next,
        or ``None`` once the session was released. Raises LeaseLostError when lost."""
        follow = runner.follow
        cls = type(ev)
        if cls is PreviewDelta or cls is PreviewStart or not follow.admit(ev.id, ev.processed_at):
            return True
        sid, token, ident = follow.session_id, follow.token, ev.id
        if ident is not None and ident != runner.begun:
            await self._gate(runner)
            await self._coordinate(runner, self.coordinator.begin_handler, sid, token, ident)
            runner.inflight = ident
        runner.begun = None
        active = cls is not SessionStatusIdle
        if isinstance(ev, AgentCustomToolUse) and ident is not None:
            runner.uses[ident] = ev
        elif self._tools and _requires_action(ev):
            # Answered from when the pause was read (never behind a running handler), and
            # before this event's handler: a worker that dies while its tools run has not
            # called the handler of this event yet.
            answering = runner.answering.pop(ident or "", None)
            if answering is None:
                answering = self._start_answering(runner, ev)
            active = await answering
        await self._gate(runner)
        redelivered = follow.redelivered(ident)
        delivery = Delivery(sid, ev, ev.turn_id, redelivered, token)
        self._client._metrics.delivered(redelivered)
        self.delivered += 1
        self.redelivered += redelivered
        await self._call_handler(runner, delivery)
        if ident is None:
            return active
        turn_over = ends_turn(ev)
        cursor = follow.delivered(ident, ev.processed_at, ends_turn=turn_over)
        after = ahead.peek()
        if (
            not turn_over
            and not self._stopping.is_set()  # stopping: commit only, nothing more in flight
            and after is not None
            and type(after) not in PREVIEW_CLASSES
            and follow.next_after(cursor, after.id, after.processed_at)
        ):
            # The next event is here: its in-flight record goes with this commit.
            await self._gate(runner)
            nxt = str(after.id)
            await self._coordinate(runner, self.coordinator.advance, sid, token, cursor, nxt)
            runner.begun = runner.inflight = nxt
        else:
            await self._coordinate(runner, self.coordinator.commit, sid, token, cursor)
            runner.inflight = None
        follow.committed(cursor)
        self._crashes.pop(sid, None)
        if turn_over:
            runner.uses.clear()
        if follow.may_release():
            if await self._release(runner):
                return None
            return True  # a message is pending: its turn is coming
        return active

    def _read_ahead(self, runner: _Runner, ev: Event) -> None:
        """An event was read (maybe while a handler runs): note its tool uses, and start
        answering a ``requires_action`` pause now, so no tool waits behind a handler
        (one that sends to its own session with ``on_busy="wait"`` would deadlock)."""
        ident = ev.id
        if not ident:
            return
        if isinstance(ev, AgentCustomToolUse):
            runner.uses[ident] = ev
        elif (
            self._tools
            and _requires_action(ev)
            and ident not in runner.answering
            and not runner.follow.known(ident)
        ):
            runner.answering[ident] = self._start_answering(runner, ev)

    def _start_answering(self, runner: _Runner, idle: SessionStatusIdle) -> asyncio.Task[bool]:
        return asyncio.get_running_loop().create_task(
            self._answer_tools(runner, idle),
            name=f"qoder_async fleet tools {runner.follow.session_id} {idle.id}",
        )

    async def _call_handler(self, runner: _Runner, delivery: Delivery) -> None:
        handler = self._handler
        assert handler is not None
        handling = _HANDLING.set(runner)
        try:
            outcome = handler(delivery)
            if inspect.isawaitable(outcome):
                await outcome
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the fleet's own cancellation (lost lease, shutdown)
            # The handler awaited something that was cancelled: its failure, not ours.
            self._handler_failed(delivery, "raised CancelledError (not the fleet's)")
        except Exception:
            self._handler_failed(delivery, "failed")
        finally:
            _HANDLING.reset(handling)

    def _handler_failed(self, delivery: Delivery, what: str) -> None:
        ev = delivery.event
        logger.exception(
            "fleet %s: the handler %s on %s %s of %s; counted as delivered",
            self.worker_id,
            what,
            ev.type,
            ev.id,
            delivery.session_id,
        )

    async def _gate(self, runner: _Runner) -> None:
        """Return when a handler may start; raise LeaseLostError when it never will."""
        follow = runner.follow
        while True:
            gate = follow.gate()
            if gate is Gate.START:
                return
            if gate is Gate.STOP:
                raise LeaseLostError(follow.session_id, follow.token)
            runner.changed.clear()
            await runner.changed.wait()

    async def _coordinate(
        self, runner: _Runner, call: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T:
        """``call(*args)``, retried through coordinator outages.

        A LeaseLostError marks the lease lost (and is raised)."""
        follow = runner.follow
        while True:
            if follow.lease.done:
                raise LeaseLostError(follow.session_id, follow.token)
            try:
                result = await call(*args)
            except LeaseLostError:
                try:
                    if await self._restored(runner):
                        continue
                except CoordinatorUnavailableError:
                    await self._sleep(runner.outage.failed())
                    continue  # the call again: refused again, or not
                follow.lease.lost()
                raise
            except CoordinatorUnavailableError as exc:
                delay = runner.outage.failed()
                if runner.outage.attempts == 1:
                    logger.warning(
                        "fleet %s: coordinator unavailable for %s (%s); retrying",
                        self.worker_id,
                        follow.session_id,
                        exc,
                    )
                await self._sleep(delay)
                continue
            runner.outage.recovered()
            return result

    async def _restored(self, runner: _Runner) -> bool:
        """After a refusal: whether the coordinator had lost the session's record (Redis
        flushed, or restarted without its data) and it is now recreated at our committed
        cursor, so nothing between is skipped (see ``Coordinator.restore``)."""
        follow = runner.follow
        sid, token = follow.session_id, follow.token
        if follow.lease.done:
            return False
        restored = await self.coordinator.restore(
            sid,
            token,
            self.worker_id,
            ttl=self.lease_ttl,
            cursor=follow.cursor,
            inflight=InFlight(runner.inflight, token) if runner.inflight else None,
        )
        if restored:
            logger.warning(
                "fleet %s: the coordinator had lost %s (its data was lost); "
                "registered it again at this worker's cursor %s",
                self.worker_id,
                sid,
                follow.cursor,
            )
        return restored

    async def _release(self, runner: _Runner) -> bool:
        follow = runner.follow
        sid, token = follow.session_id, follow.token
        if await self._coordinate(runner, self.coordinator.release, sid, token):
            follow.lease.released()
            return True
        return False

    # ------------------------------------------------------------------ tools

    async def _answer_tools(self, runner: _Runner, idle: SessionStatusIdle) -> bool:
        """Run or post what the pause waits for (through the ledger). Returns whether
        results were posted (the session then runs on)."""
        wanted = tuple(getattr(idle.stop_reason, "event_ids", ()))
        failures = OutageBackoff(clock=self._clock, rand=self._rand)
        while True:
            try:
                return await self._answer_tools_once(runner, wanted)
            except APIStatusError as exc:
                if not isinstance(exc, _TRANSIENT):  # refused for good: leave it to others
                    logger.error(
                        "fleet %s: the tool results of %s were refused (%s); not retrying",
                        self.worker_id,
                        runner.follow.session_id,
                        exc,
                    )
                    return False
                error: APIError = exc
            except APIError as exc:  # no answer: try again (a stored result is never re-run)
                error = exc
            delay = failures.failed()
            logger.warning(
                "fleet %s: answering the tools of %s failed (%s); retrying in %.1fs",
                self.worker_id,
                runner.follow.session_id,
                error,
                delay,
            )
            await self._sleep(delay)

    async def _answer_tools_once(self, runner: _Runner, wanted: Sequence[str]) -> bool:
        follow = runner.follow
        sid, token = follow.session_id, follow.token
        missing = [i for i in wanted if i not in runner.uses]
        if missing:
            await self._find_uses(runner, missing)
        calls = [
            ToolCall(runner.uses[i])
            for i in wanted
            if i in runner.uses and runner.uses[i].name in self._tools
        ]
        if not calls:
            return False
        records: dict[str, ToolRecord] = {}
        for call in calls:
            records[call.id] = await self._coordinate(
                runner, self.coordinator.claim_tool, sid, token, call.id
            )
        to_run = [c for c in calls if tool_action(records[c.id], token) is ToolAction.RUN]
        outputs = await asyncio.gather(*(self._run_tool(runner, c) for c in to_run))
        results = dict(zip((c.id for c in to_run), outputs, strict=True))
        for call in calls:
            action = tool_action(records[call.id], token)
            if action is ToolAction.RUN or action is ToolAction.ORPHANED:
                if action is ToolAction.ORPHANED:
                    logger.warning(
                        "fleet %s: tool %r (%s) of %s was running when its worker stopped; "
                        "reporting an unknown outcome instead of running it again",
                        self.worker_id,
                        call.name,
                        call.id,
                        sid,
                    )
                    body = _result_json(tool_result(call, _ORPHANED_TEXT, True))
                else:
                    body = results[call.id]
                records[call.id] = await self._coordinate(
                    runner, self.coordinator.store_tool_result, sid, token, call.id, body
                )
        to_post = [c for c in calls if records[c.id].state is ToolState.DONE]
        if not to_post:
            return False
        bodies = [json.loads(records[c.id].result or "{}") for c in to_post]
        await self._post_results(runner, to_post, bodies)
        for call in to_post:
            await self._coordinate(runner, self.coordinator.mark_tool_posted, sid, call.id)
        return True

    async def _find_uses(self, runner: _Runner, missing: Sequence[str]) -> None:
        """Tool uses delivered before this owner took over, from the history (newest first)."""
        want = set(missing)
        seen = 0
        pages = _pages(
            self._client.sessions.events.list(
                runner.follow.session_id, order="desc", limit=100, types=["agent.custom_tool_use"]
            )
        )
        async with contextlib.aclosing(pages) as it:
            async for page in it:
                for ev in page:
                    if isinstance(ev, AgentCustomToolUse) and ev.id in want:
                        runner.uses[ev.id] = ev
                        want.discard(ev.id)
                    seen += 1
                if not want or seen >= _LOOKUP_LIMIT:
                    return

    async def _run_tool(self, runner: _Runner, call: ToolCall) -> str:
        async with self._slots:
            await self._gate(runner)  # after the wait for a slot: the lease is checked now
            try:  # the conversion too: an output with none is the handler's error
                out = await call_handler(self._tools[call.name], call.input)
                return _result_json(tool_result(call, out, False))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "fleet %s: tool %r (%s) of %s failed; reporting the error to the agent",
                    self.worker_id,
                    call.name,
                    call.id,
                    runner.follow.session_id,
                    exc_info=exc,
                )
                return _result_json(error_result(call, exc))

    async def _post_results(
        self, runner: _Runner, calls: list[ToolCall], bodies: list[Any]
    ) -> None:
        sid = runner.follow.session_id
        events = self._client.sessions.events
        try:
            await events.send(sid, bodies, idempotency_key=results_key([c.id for c in calls]))
        except ToolResultsNotAwaitedError:
            if len(calls) == 1:
                return  # answered already (an earlier owner posted it)
            for call, body in zip(calls, bodies, strict=True):
                with contextlib.suppress(ToolResultsNotAwaitedError):
                    await events.send(sid, [body], idempotency_key=results_key([call.id]))


def _pages(paginator: AsyncPaginator[Event]) -> AsyncGenerator[list[Event], None]:
    """The paginator's pages as the async generator they are (so it can be closed early)."""
    return cast("AsyncGenerator[list[Event], None]", paginator.pages())


def _result_json(result: UserCustomToolResult) -> str:
    """A tool's result as the ledger stores it: the event to post, as JSON."""
    return json.dumps(unstructure_event(result))
