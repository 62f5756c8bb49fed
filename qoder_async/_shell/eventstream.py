"""SHELL: the resumable event stream, a thin driver of the stream machine.

The loop below moves bytes from the transport into the decoder and events out
to the consumer; every decision (is this event new, where to resume, is the
connection dead, reconnect or give up) is the stream machine's
(``_core/machine.py``, with its rule tables). A timer asks the machine about
liveness while the stream waits on the network and cancels the read when the
machine says so, the way ``asyncio.timeout`` does: in the task reading now
(each ``anext()`` may run in its own task), taking back only its own
cancellation. ``aclose()`` from another task cancels the read the same way,
and the iteration ends (no error) with the connection closed.

The generator holds the connection; nothing else holds the generator strongly
(the stream keeps a weak reference), so a consumer that breaks out of
``async for`` without ``async with`` still gets its connection closed as soon
as the generator is dropped.

Each reconnect is logged on ``qoder_async``: at DEBUG when an open stream
ended or broke off (resumed from its cursor as a matter of course), at WARNING
when the stream could not be opened (a connection failure, a retryable
status) or went silent (read timeout, stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from qoder_async._core.backoff import ReconnectPolicy
from qoder_async._core.errors import (
    APIConnectionError,
    ClientClosedError,
    CursorStoreError,
    StreamError,
    scrub,
)
from qoder_async._core.machine import DEFAULT_DEDUPE_WINDOW, Cause, Dedupe, GiveUp, StreamMachine
from qoder_async._core.models import Cursor, Event, SessionDeletedEvent, SessionStatusTerminated
from qoder_async._core.sse import DEFAULT_MAX_EVENT_BYTES, EventDecoder
from qoder_async._shell.http import HTTP, StreamRetry

__all__ = [
    "DEFAULT_MAX_STALLS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "CursorStore",
    "EventStream",
    "MemoryCursorStore",
]

logger = logging.getLogger("qoder_async")

DEFAULT_READ_TIMEOUT = 90.0
DEFAULT_STALL_TIMEOUT = 120.0
DEFAULT_MAX_STALLS = 5
_ENDS_STREAM = (SessionStatusTerminated, SessionDeletedEvent)


@runtime_checkable
class CursorStore(Protocol):
    """Where a stream keeps its cursor so a restarted process can resume.

    ``save`` is called once the consumer has finished with an event (when it
    asks for the next one), so a restart never skips an event. A store that
    raises ends the stream with :class:`CursorStoreError` (nothing is lost).
    """

    async def load(self, session_id: str) -> Cursor | str | None:
        """The saved cursor for ``session_id`` (a :class:`Cursor` or an event id), or None."""
        ...

    async def save(self, session_id: str, cursor: Cursor) -> None:
        """Remember ``cursor`` for ``session_id``."""
        ...


class MemoryCursorStore:
    """A :class:`CursorStore` in a dict (for tests, or to share cursors between streams)."""

    def __init__(self) -> None:
        self.cursors: dict[str, Cursor] = {}

    async def load(self, session_id: str) -> Cursor | None:
        """The saved cursor, or None."""
        return self.cursors.get(session_id)

    async def save(self, session_id: str, cursor: Cursor) -> None:
        """Remember the cursor."""
        self.cursors[session_id] = cursor


def as_cursor(value: Cursor | str | None) -> Cursor | None:
    """A :class:`Cursor` from a cursor, an event id or None."""
    if value is None or isinstance(value, Cursor):
        return value
    if isinstance(value, str) and value:
        return Cursor(value)
    raise TypeError(f"a cursor must be a Cursor or an event id, got {value!r}")


class _Watchdog:
    """Asks the machine about liveness every ``period`` s; cancels the read when it says so.

    Costs one timer per stream (aiohttp's own read timeout re-arms a timer per
    chunk: at thousands of chunks a second that was the largest single cost of
    a many-stream client). The cancellation is taken back with
    ``Task.uncancel`` by the reader, exactly like ``asyncio.timeout`` does.
    ``task`` is the task reading *now* (each ``anext()`` may run in a task of
    its own); ``cancelled`` the one it cancelled, so a cancellation of any
    other task (or a second one of the same task) is never taken for its own.
    """

    __slots__ = ("_handle", "_loop", "_machine", "_period", "cancelled", "fired", "task")

    def __init__(self, machine: StreamMachine, period: float) -> None:
        self._machine = machine
        self._period = period
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.Handle | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancelled: asyncio.Task[Any] | None = None
        self.fired: Cause | None = None

    def start(self) -> None:
        self.task = asyncio.current_task()
        self.fired = self.cancelled = None
        self._arm()

    def _arm(self) -> None:
        self._handle = self._loop.call_later(self._period, self._tick)

    def _tick(self) -> None:
        verdict = self._machine.check()
        if verdict is not None:
            # Not yet: after a long pause (a busy loop, a GC), data may be waiting in
            # this very loop iteration; confirm once the reader had its turn.
            self._handle = self._loop.call_soon(self._confirm, self._machine.chunks)
            return
        self._arm()

    def _confirm(self, chunks: int) -> None:
        machine = self._machine
        verdict = machine.check() if machine.chunks == chunks else None
        task = self.task
        if verdict is not None and not machine.consumer_busy and task is not None:
            self._handle = None
            self.fired, self.cancelled = verdict, task
            task.cancel()
            return
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class EventStream:
    """A session's event stream that reconnects and resumes by itself.

    Use as ``async with client.sessions.events.stream(session_id) as stream:
    async for ev in stream: ...``. On a transport error, a clean end of the
    response, a silent connection or a stall it reconnects with
    ``Last-Event-ID`` (capped exponential backoff with jitter, the server's
    ``retry:`` as a floor); events handed out before, and events a server
    replays from before the cursor, are dropped. 400/401/403/404 and a non-SSE
    answer are fatal and raise the typed error. Iteration ends after
    ``[DONE]``, ``session.deleted`` or ``session.status_terminated``.

    ``last_event_id`` (and ``cursor``, with its ``processed_at``) is always a
    safe resume point: the last event this stream handed out. Heartbeats keep
    the socket alive but are not progress: while the session is running,
    ``stall_timeout`` seconds without an event trigger a reconnect, and after
    ``max_stalls`` of them in a row (``stall_timeout * max_stalls`` seconds
    without an event) :class:`StreamStalledError` is raised. ``read_timeout``
    seconds without any byte (not even a heartbeat) also reconnect.
    """

    def __init__(
        self,
        http: HTTP,
        session_id: str,
        path: str,
        *,
        last_event_id: Cursor | str | None = None,
        event_deltas: Iterable[str] = (),
        reconnect: ReconnectPolicy | None = None,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        dedupe: Dedupe | None = None,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        cursor_store: CursorStore | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        lazy_raw: bool = False,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._http = http
        self.session_id = session_id
        self._path = path
        self._params = [("event_deltas[]", d) for d in event_deltas]
        self._cursor_store = cursor_store
        self._on_reconnect = on_reconnect
        self._on_connect = on_connect
        self._sleep = sleep or http.sleep
        start = as_cursor(last_event_id)
        self._machine = StreamMachine(
            cursor=start,
            policy=reconnect,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
            read_timeout=read_timeout,
            clock=http.clock,
            rand=http.rand,
            dedupe=dedupe if dedupe is not None else Dedupe(dedupe_window),
        )
        self._decoder = EventDecoder(max_event_bytes=max_event_bytes, lazy_raw=lazy_raw)
        self._cursor_loaded = start is not None or cursor_store is None
        self._saved: Cursor | None = start
        self._iterator: weakref.ref[AsyncIterator[Event]] | None = None
        self._held: AsyncIterator[Event] | None = None  # only for direct __anext__ use
        self._closed = False
        # The task inside the generator now (None while the consumer holds an event),
        # and the one aclose() cancelled from another task to end the iteration.
        self._reader: asyncio.Task[Any] | None = None
        self._closing: asyncio.Task[Any] | None = None
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"<EventStream {self.session_id} at {self.last_event_id}>"

    # -- public surface

    @property
    def last_event_id(self) -> str | None:
        """The resume cursor: the id of the last event handed out (or the starting one)."""
        return self._machine.last_event_id

    @property
    def cursor(self) -> Cursor | None:
        """The resume cursor with its ``processed_at`` (for :class:`CursorStore` and resumes)."""
        return self._machine.cursor

    @property
    def heartbeats(self) -> int:
        """Keep-alives received (comments, heartbeat/ping and empty frames)."""
        return self._decoder.keepalives

    @property
    def duplicates(self) -> int:
        """Events dropped because they were handed out before or replayed from before the cursor."""
        return self._machine.duplicates + self._machine.stale

    @property
    def connections(self) -> int:
        """Connections established so far."""
        return self._machine.connections

    @property
    def stalls(self) -> int:
        """Stalls in a row so far (reset by an event)."""
        return self._machine.stalls

    @property
    def expect_activity(self) -> bool:
        """Whether the owner expects events now (a send awaits its turn): stalls count then."""
        return self._machine.expecting

    @expect_activity.setter
    def expect_activity(self, value: bool) -> None:
        self._machine.expecting = value

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Event]:
        it = self._iterator() if self._iterator is not None else None
        if it is None:
            if self._closed:
                raise ClientClosedError("this event stream is closed")
            it = self._run()
            self._iterator = weakref.ref(it)
        return it

    async def __anext__(self) -> Event:
        if self._held is None:
            self._held = self.__aiter__()
        return await self._held.__anext__()

    async def aclose(self) -> None:
        """Close the connection; iteration ends. Idempotent; from any task.

        Called from another task while a consumer iterates, the consumer's
        iteration ends at once (its ``async for`` stops, no error) and the
        connection is closed: a read in progress is cancelled, an event the
        consumer holds is its last. With a ``cursor_store``, the last event
        handed out is saved now: the consumer that closes the stream is done
        with it.
        """
        self._closed = True
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            self._closing = reader
            reader.cancel()
        it = self._iterator() if self._iterator is not None else None
        self._iterator = self._held = None
        if it is not None:
            with contextlib.suppress(RuntimeError):
                await it.aclose()  # type: ignore[attr-defined]
        await self._save(self._machine.cursor)

    # -- the loop

    async def _save(self, cursor: Cursor | None) -> None:
        if self._cursor_store is None or cursor is None or cursor == self._saved:
            return
        try:
            await self._cursor_store.save(self.session_id, cursor)
            self._saved = cursor
        except Exception as exc:
            raise CursorStoreError(
                f"the cursor store failed to save {cursor.event_id}: {exc!r}",
                last_event_id=cursor.event_id,
            ) from exc

    async def _load(self) -> None:
        store = self._cursor_store
        if self._cursor_loaded or store is None:
            return
        try:
            saved = as_cursor(await store.load(self.session_id))
        except Exception as exc:
            raise CursorStoreError(f"the cursor store failed to load: {exc!r}") from exc
        self._machine.start(saved)
        self._saved = saved
        self._cursor_loaded = True

    def _prepared(self, exc: BaseException) -> BaseException:
        """``exc`` with the cursor attached and server text redacted, ready to raise."""
        if isinstance(exc, StreamError) and exc.last_event_id is None:
            exc.last_event_id = self._machine.last_event_id
        return scrub(exc, self._http.secrets)

    def _stopped(self) -> bool:
        """True once :meth:`aclose` was called (a method: the loop must re-read it)."""
        return self._closed

    def _closed_by_aclose(self) -> bool:
        """True when the cancellation being handled is aclose()'s (from another task)."""
        task = asyncio.current_task()
        if task is None or task is not self._closing:
            return False
        self._closing = None
        return task.uncancel() == 0

    async def _run(self) -> AsyncIterator[Event]:
        self._reader = asyncio.current_task()
        try:
            http, machine, decoder = self._http, self._machine, self._decoder
            try:
                await self._load()
            except asyncio.CancelledError:
                if self._closed_by_aclose():
                    return
                raise
            timeouts = [t for t in (machine.read_timeout, machine.stall_timeout) if t]
            watchdog = _Watchdog(machine, min(timeouts) / 4) if timeouts else None
            take = machine.take
            store = self._cursor_store
            current_task = asyncio.current_task
            errors = http.transport.errors
            while not self._closed:
                http.check_open()
                cause: Cause | None = None
                error: BaseException | None = None
                server_retry: float | None = None
                resume = machine.connecting()
                opened = False
                try:
                    async with http.stream(
                        self._path, params=self._params, last_event_id=resume
                    ) as resp:
                        machine.connected()
                        opened = True
                        decoder.reconnected()
                        if self._on_connect is not None:
                            self._on_connect()
                        chunks = resp.chunks
                        if watchdog is not None:
                            watchdog.start()
                        try:
                            while True:
                                if self._reader is None:
                                    # The first read since an event was handed out: the
                                    # consumer's anext() may run in another task.
                                    self._reader = reader = current_task()
                                    if watchdog is not None:
                                        watchdog.task = reader
                                try:
                                    chunk = await chunks.__anext__()
                                except StopAsyncIteration:
                                    break
                                except errors as exc:
                                    url = http.url(self._path)  # built on failure only
                                    raise http.transport.connection_error(exc, "GET", url) from exc
                                machine.chunks += 1
                                # Events are decoded one at a time, as the consumer asks for
                                # them; a bad frame ends the iteration (after the events
                                # before it) and waits in decoder.error.
                                for ev in decoder.decode(chunk):
                                    if take(ev):
                                        machine.consumer_busy = True
                                        self._reader = None
                                        yield ev
                                        # The reader (the next anext() may run in another
                                        # task) is looked up before the next await only:
                                        # nothing can cancel it while it runs.
                                        if self._stopped():
                                            return
                                        if store is not None:
                                            self._reader = reader = current_task()
                                            if watchdog is not None:
                                                watchdog.task = reader
                                            await self._save(machine.cursor)
                                        machine.consumer_busy = False
                                        if type(ev) in _ENDS_STREAM:
                                            return
                                bad = decoder.error
                                if bad is not None:
                                    raise self._prepared(bad) from bad.__cause__
                                if decoder.done:
                                    return
                        finally:
                            if watchdog is not None:
                                watchdog.stop()
                    cause = Cause.EOF
                except asyncio.CancelledError:
                    if self._closed_by_aclose():
                        return
                    task = asyncio.current_task()
                    if (
                        task is None
                        or watchdog is None
                        or watchdog.fired is None
                        or task is not watchdog.cancelled
                    ):
                        raise
                    watchdog.cancelled = None
                    if task.uncancel() > 0:
                        raise
                    cause, watchdog.fired = watchdog.fired, None
                except StreamRetry as exc:
                    cause, error, server_retry = Cause.STATUS, exc.cause, exc.retry_after
                except APIConnectionError as exc:
                    cause, error = Cause.ERROR, exc
                if server_retry is None and decoder.retry_ms is not None:
                    server_retry = decoder.retry_ms / 1000.0
                decision = machine.failed(
                    cause, server_retry=server_retry, heartbeats=self.heartbeats
                )
                http.observer.stream_dropped(cause is Cause.STALL, not isinstance(decision, GiveUp))
                if isinstance(decision, GiveUp):
                    raise self._prepared(decision.error) from error
                self.reconnects += 1
                if self._on_reconnect is not None:
                    self._on_reconnect()
                # An open stream that ended or broke off is resumed as a matter of course
                # (proxies cut long responses); failing to get a stream back is a WARNING.
                routine = cause is Cause.EOF or (cause is Cause.ERROR and opened)
                logger.log(
                    logging.DEBUG if routine else logging.WARNING,
                    "stream %s: %s (%s); reconnecting in %.2fs from %s (attempt %d, stalls %d)",
                    self.session_id,
                    cause.value,
                    error,
                    decision.delay,
                    machine.last_event_id,
                    machine.attempts,
                    machine.stalls,
                )
                try:
                    await self._sleep(decision.delay)
                except asyncio.CancelledError:
                    if self._closed_by_aclose():
                        return
                    raise
        finally:
            self._reader = None
