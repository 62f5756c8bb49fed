"""SHELL: QoderClient, its resources, the request/retry loop and the resilient event stream.

Everything that touches the network lives here and in ``_session.py``; the
decisions (retry or not, how long to wait, what a frame means) are made by the
sans-I/O core modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit

import aiohttp
import httpx
import httpx_sse
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from ._backoff import Reconnector, ReconnectPolicy, RetryPolicy
from ._convert import (
    ShapeError,
    structure_agent,
    structure_deleted_session,
    structure_environment,
    structure_event,
    structure_session,
    unstructure_event,
)
from ._errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    IdempotencyConflictError,
    ResumeExhaustedError,
    SessionBusyError,
    StreamContentTypeError,
    StreamStalledError,
    error_from_response,
    parse_retry_after,
)
from ._models import (
    Accepted,
    Agent,
    DeletedSession,
    Environment,
    Event,
    EventDelta,
    EventStart,
    OutboundEvent,
    Session,
    SessionDeleted,
    SessionStatusIdle,
    SessionStatusRescheduled,
    SessionStatusRunning,
    SessionStatusTerminated,
)
from ._stream import (
    DEFAULT_DEDUPE_WINDOW,
    DEFAULT_MAX_EVENT_BYTES,
    EventDecoder,
    json_dumps,
    json_loads,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._session import SessionHandle

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncPaginator",
    "CursorStore",
    "EventStream",
    "MemoryCursorStore",
    "QoderClient",
]

logger = logging.getLogger("qoder_async")

DEFAULT_BASE_URL = "https://api.qoder.com/api/v1/cloud"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_STREAM_READ_TIMEOUT = 90.0
DEFAULT_STALL_TIMEOUT = 120.0
DEFAULT_MAX_STALLS = 5
# Enough sockets for thousands of concurrent session streams; aiohttp's own default is 100.
DEFAULT_LIMITS = httpx.Limits(max_connections=0, max_keepalive_connections=100)
_ERROR_BODY_LIMIT = 64 * 1024

_T = TypeVar("_T")

# What a transport failure can look like under httpx + httpx-aiohttp + aiohttp.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    httpx.StreamError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    EOFError,
)


def _setup_logging() -> None:
    level = os.environ.get("QODER_LOG", "").strip().lower()
    if level in ("debug", "info"):
        logger.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
            logger.addHandler(handler)


_setup_logging()


class _Secret:
    """Holds the token (and the request headers that carry it); its repr never shows it."""

    __slots__ = ("_value", "headers")

    def __init__(self, value: str, headers: Mapping[str, str] | None = None) -> None:
        self._value = value
        self.headers = {**(headers or {}), "Authorization": f"Bearer {value}"}

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _resolve_base_url(base_url: str | None, allow_insecure_http: bool) -> str:
    url = (base_url or os.environ.get("QODER_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"refusing plain http:// to {parts.hostname}: the token would travel unencrypted. "
            "Use https, or pass allow_insecure_http=True if you really mean it."
        )
    return url


def _resolve_token(token: str | None) -> str:
    value = token or os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN")
    if not value or not value.strip():
        raise ConfigurationError(
            "no Qoder access token: pass token=..., or set QODER_PAT (or QODER_ACCESS_TOKEN)"
        )
    value = value.strip()
    if any(c in value for c in "\r\n\x00"):
        raise ConfigurationError("the access token contains control characters")
    return value


def _seg(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"an id must be a non-empty string, got {value!r}")
    return quote(value, safe="")


# --------------------------------------------------------------------------- cursor store


@runtime_checkable
class CursorStore(Protocol):
    """Where a stream keeps its resume cursor so a restarted process can resume.

    ``save`` is called once the consumer has finished with an event (when it
    asks for the next one), so a restart never skips an event.
    """

    async def load(self, session_id: str) -> str | None:
        """The saved cursor for ``session_id``, or None."""
        ...

    async def save(self, session_id: str, event_id: str) -> None:
        """Remember ``event_id`` as the cursor of ``session_id``."""
        ...


class MemoryCursorStore:
    """A :class:`CursorStore` in a dict (for tests, or to share cursors between streams)."""

    def __init__(self) -> None:
        self.cursors: dict[str, str] = {}

    async def load(self, session_id: str) -> str | None:
        """The saved cursor, or None."""
        return self.cursors.get(session_id)

    async def save(self, session_id: str, event_id: str) -> None:
        """Remember the cursor."""
        self.cursors[session_id] = event_id


# --------------------------------------------------------------------------- pagination


class AsyncPaginator(Generic[_T]):
    """Iterates every item of a list endpoint, fetching pages as needed.

    Follows the ``page``/``next_page`` cursor when the server sends one, else
    ``after_id=<last_id>`` while ``has_more``; raises
    :class:`APIResponseValidationError` if a cursor fails to advance.
    """

    def __init__(
        self,
        client: QoderClient,
        path: str,
        params: list[tuple[str, str]],
        item: Callable[[Any], _T],
    ) -> None:
        self._client = client
        self._path = path
        self._params = params
        self._item = item

    def __aiter__(self) -> AsyncIterator[_T]:
        return self._items()

    async def pages(self) -> AsyncIterator[list[_T]]:
        """Iterate page by page."""
        params = list(self._params)
        seen: set[tuple[str, str]] = set()
        while True:
            body = await self._client._request("GET", self._path, params=params)
            if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
                raise APIResponseValidationError(
                    "a list answer must be an object with a 'data' array",
                    method="GET",
                    url=self._path,
                    body=body,
                )
            try:
                yield [self._item(raw) for raw in body["data"]]
            except ShapeError as exc:
                raise APIResponseValidationError(
                    f"unexpected item in a list answer: {exc}", method="GET", url=self._path
                ) from exc
            cursor = self._next_cursor(body)
            if cursor is None:
                return
            if cursor in seen:
                raise APIResponseValidationError(
                    f"pagination cursor did not advance ({cursor[0]}={cursor[1]})",
                    method="GET",
                    url=self._path,
                )
            seen.add(cursor)
            params = [(k, v) for k, v in self._params if k not in ("page", "after_id")]
            params.append(cursor)

    def _next_cursor(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        next_page = body.get("next_page")
        if isinstance(next_page, str) and next_page:
            return ("page", next_page)
        if not body.get("has_more"):
            return None
        last_id = body.get("last_id")
        if not isinstance(last_id, str) or not last_id:
            data = body.get("data") or []
            last = data[-1] if data else None
            last_id = last.get("id") if isinstance(last, Mapping) else None
        if not isinstance(last_id, str) or not last_id:
            raise APIResponseValidationError(
                "has_more is true but the answer names no cursor", method="GET", url=self._path
            )
        return ("after_id", last_id)

    async def _items(self) -> AsyncIterator[_T]:
        async for page in self.pages():
            for item in page:
                yield item


def _list_params(**values: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif isinstance(value, list | tuple):
            out.extend((f"{key}[]", str(v)) for v in value)
        else:
            out.append((key, str(value)))
    return out


# --------------------------------------------------------------------------- the event stream


class _Watchdog:
    """Cancels the reading task when its stream stops making progress.

    Two clocks, both only running while the task waits on the network (not while
    the consumer is busy): *read* fires after ``read_timeout`` seconds without
    any bytes, *stall* after ``stall_timeout`` seconds without a real event
    while the session is active (heartbeats are bytes, not events). They cost
    one counter increment per chunk (``chunks``) and per event (``ticks``) and
    one timer per stream that checks every quarter of the shorter timeout, so a
    timeout is detected within 1.25x its value. (aiohttp's own read timeout
    re-arms a timer on every chunk: at thousands of chunks a second that was the
    largest single cost of a many-stream client.) The cancellation is taken back
    with ``Task.uncancel`` by the reader, exactly like ``asyncio.timeout`` does.
    """

    __slots__ = (
        "_active",
        "_handle",
        "_loop",
        "_period",
        "_seen_chunks",
        "_seen_ticks",
        "_task",
        "chunks",
        "fired",
        "last_bytes",
        "last_progress",
        "read_timeout",
        "reading",
        "stall_timeout",
        "ticks",
    )

    def __init__(
        self, read_timeout: float | None, stall_timeout: float | None, active: Callable[[], bool]
    ) -> None:
        self.read_timeout = read_timeout
        self.stall_timeout = stall_timeout
        self._period = min(t for t in (read_timeout, stall_timeout) if t) / 4
        self._active = active
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.Handle | None = None
        self.last_bytes = self.last_progress = self._loop.time()
        self.reading = False
        self.fired: str | None = None
        self.chunks = self.ticks = self._seen_chunks = self._seen_ticks = 0

    def start(self) -> None:
        self._task = asyncio.current_task()
        self.last_bytes = self.last_progress = self._loop.time()
        self._seen_chunks, self._seen_ticks = self.chunks, self.ticks
        self.fired = None
        self._arm()

    def _arm(self) -> None:
        self._handle = self._loop.call_at(self._loop.time() + self._period, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        if not self.reading:
            self.last_bytes = self.last_progress = now
        else:
            if self.chunks != self._seen_chunks:
                self._seen_chunks = self.chunks
                self.last_bytes = now
            if self.ticks != self._seen_ticks or not self._active():
                self._seen_ticks = self.ticks
                self.last_progress = now
            late = (self.read_timeout and now - self.last_bytes >= self.read_timeout) or (
                self.stall_timeout and now - self.last_progress >= self.stall_timeout
            )
            if late:
                # Not yet: after a long pause (a busy loop, a GC), data may be waiting
                # in this very loop iteration; confirm once the reader had its turn.
                self._handle = self._loop.call_soon(self._confirm, self.chunks, self.ticks)
                return
        self._arm()

    def _confirm(self, chunks: int, ticks: int) -> None:
        self._handle = None
        if self.reading and self._task is not None:
            if (
                self.chunks == chunks
                and self.read_timeout
                and (self._loop.time() - self.last_bytes >= self.read_timeout)
            ):
                self.fired = "read"
            elif self.ticks == ticks and self.stall_timeout and self._active():
                self.fired = "stall"
            if self.fired:
                self._task.cancel()
                return
        self._check()

    def idle_for(self) -> float:
        return self._loop.time() - self.last_progress

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# What status events mean to a stream: 1 running, 0 idle, 2 the end of the session.
_STATUS_EFFECT: dict[type, int] = {
    SessionStatusRunning: 1,
    SessionStatusRescheduled: 1,
    SessionStatusIdle: 0,
    SessionStatusTerminated: 2,
    SessionDeleted: 2,
}


class EventStream:
    """A session's event stream that reconnects and resumes by itself.

    Use as ``async with client.sessions.events.stream(session_id) as stream:
    async for ev in stream: ...``. On a transport error, a clean end of the
    response or a stall it reconnects with ``Last-Event-ID`` (capped exponential
    backoff with jitter, the server's ``retry:`` as a floor); replayed events are
    dropped by id. 400/401/403/404 and a non-SSE answer are fatal and raise the
    typed error. Iteration ends after ``[DONE]``, ``session.deleted`` or
    ``session.status_terminated``.

    ``last_event_id`` is always a safe resume point: the last event this stream
    handed out. Heartbeats keep the socket alive but are not progress: while the
    session is running, ``stall_timeout`` seconds without an event trigger a
    reconnect, and ``max_stalls`` stalls in a row raise :class:`StreamStalledError`.
    """

    def __init__(
        self,
        client: QoderClient,
        session_id: str,
        *,
        last_event_id: str | None = None,
        event_deltas: Iterable[str] = (),
        reconnect: ReconnectPolicy | None = None,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_STREAM_READ_TIMEOUT,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        cursor_store: CursorStore | None = None,
        on_reconnect: Callable[[], None] | None = None,
        lazy_raw: bool = False,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self._path = f"/sessions/{_seg(session_id)}/events/stream"
        self._params = [("event_deltas[]", d) for d in event_deltas]
        self._reconnect = reconnect or client.reconnect_policy
        self.stall_timeout = stall_timeout
        self.max_stalls = max_stalls
        self._read_timeout = read_timeout
        self._cursor_store = cursor_store
        self._on_reconnect = on_reconnect
        self._decoder = EventDecoder(
            last_event_id=last_event_id,
            max_event_bytes=max_event_bytes,
            dedupe_window=dedupe_window,
            lazy_raw=lazy_raw,
        )
        self._cursor = last_event_id
        self._cursor_loaded = last_event_id is not None or cursor_store is None
        self._to_save: str | None = None
        self._iterator: AsyncIterator[Event] | None = None
        self._closed = False
        self._running = False
        self.expect_activity = False
        self.connections = 0
        self.reconnects = 0
        self.stalls = 0

    # -- public surface

    @property
    def last_event_id(self) -> str | None:
        """The resume cursor: the id of the last event handed out (or the starting one)."""
        return self._cursor

    @property
    def heartbeats(self) -> int:
        """Keep-alives received (comments, heartbeat/ping and empty frames)."""
        return self._decoder.keepalives

    @property
    def duplicates(self) -> int:
        """Replayed events dropped because their id was already seen."""
        return self._decoder.duplicates

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Event]:
        # The generator itself: no extra await layer per event.
        if self._iterator is None:
            if self._closed:
                raise ClientClosedError("this event stream is closed")
            self._iterator = self._run()
        return self._iterator

    async def __anext__(self) -> Event:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        """Close the connection; iteration ends. Idempotent."""
        self._closed = True
        it, self._iterator = self._iterator, None
        if it is not None:
            with contextlib.suppress(RuntimeError):
                await it.aclose()  # type: ignore[attr-defined]
        await self._save_cursor()

    # -- the loop

    async def _save_cursor(self) -> None:
        if self._cursor_store is not None and self._to_save is not None:
            event_id, self._to_save = self._to_save, None
            await self._cursor_store.save(self.session_id, event_id)

    async def _run(self) -> AsyncIterator[Event]:
        client = self._client
        if not self._cursor_loaded and self._cursor_store is not None:
            self._cursor = self._decoder.last_event_id = await self._cursor_store.load(
                self.session_id
            )
            self._cursor_loaded = True
        rng = random.Random()
        state = Reconnector(self._reconnect, clock=time.monotonic, rand=rng.random)
        watchdog = (
            _Watchdog(self._read_timeout, self.stall_timeout, self._active)
            if self._read_timeout or self.stall_timeout
            else None
        )
        decoder = self._decoder
        stalls_in_a_row = 0
        heartbeats_at_stall = 0
        last_error: BaseException | None = None
        while True:
            client._check_open()
            cause: BaseException | None = None
            server_retry: float | None = None
            try:
                async with self._connect() as response:
                    state.connected()
                    self.connections += 1
                    if watchdog is not None:
                        watchdog.start()
                    chunks = _body_chunks(response)
                    store = self._cursor_store
                    decode = decoder.feed
                    progressed = False
                    try:
                        while True:
                            if watchdog is not None:
                                watchdog.reading = True
                            try:
                                chunk = await chunks.__anext__()
                            except StopAsyncIteration:
                                break
                            finally:
                                if watchdog is not None:
                                    watchdog.reading = False
                            if watchdog is not None:
                                watchdog.chunks += 1
                            for ev in decode(chunk):
                                cls = type(ev)
                                ending = False
                                if cls is not EventDelta and cls is not EventStart:
                                    if watchdog is not None:
                                        watchdog.ticks += 1
                                    if not progressed:
                                        progressed = True
                                        state.progress()
                                        stalls_in_a_row = 0
                                    effect = _STATUS_EFFECT.get(cls)
                                    if effect is not None:
                                        ending = effect == 2
                                        self._running = effect == 1
                                    if ev.id is not None:
                                        self._cursor = ev.id
                                        if store is not None:
                                            self._to_save = ev.id
                                yield ev
                                if store is not None:
                                    await self._save_cursor()
                                if ending:
                                    return
                            if decoder.error is not None:
                                raise decoder.error  # after every event before it
                            if decoder.done:
                                return
                    finally:
                        if watchdog is not None:
                            watchdog.stop()
                logger.debug(
                    "stream %s ended cleanly; resuming from %s", self.session_id, self._cursor
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if watchdog is None or not watchdog.fired or task is None or task.uncancel() > 0:
                    raise
                fired, watchdog.fired = watchdog.fired, None
                if fired == "read":
                    cause = APITimeoutError(
                        f"no data on the stream for {watchdog.read_timeout}s (read_timeout)",
                        method="GET",
                        url=self._path,
                    )
                else:
                    self.stalls += 1
                    stalls_in_a_row += 1
                    idle = watchdog.idle_for()
                    logger.debug(
                        "stream %s stalled (%d in a row, %d heartbeats); reconnecting from %s",
                        self.session_id,
                        stalls_in_a_row,
                        self.heartbeats - heartbeats_at_stall,
                        self._cursor,
                    )
                    if stalls_in_a_row >= self.max_stalls:
                        raise StreamStalledError(
                            stalls=stalls_in_a_row,
                            stall_timeout=watchdog.stall_timeout or 0.0,
                            idle_seconds=idle,
                            heartbeats=self.heartbeats - heartbeats_at_stall,
                            last_event_id=self._cursor,
                        ) from None
                    heartbeats_at_stall = self.heartbeats
                    state.attempts = 0  # a stall is not a connection failure
            except _Retryable as exc:
                cause = exc.cause
                server_retry = exc.retry_after
            except TRANSPORT_ERRORS as exc:
                cause = _connection_error(exc, "GET", self._path)
            if cause is not None:
                last_error = cause
            floor = server_retry
            if floor is None and decoder.retry_ms is not None:
                floor = decoder.retry_ms / 1000.0
            delay = state.failed(floor)
            if delay is None:
                raise ResumeExhaustedError(
                    attempts=state.attempts - 1,
                    elapsed=state.failing_for,
                    last_event_id=self._cursor,
                ) from last_error
            self.reconnects += 1
            decoder.reconnected()
            if self._on_reconnect is not None:
                self._on_reconnect()
            logger.debug(
                "stream %s reconnecting in %.2fs from %s (attempt %d, cause: %r)",
                self.session_id,
                delay,
                self._cursor,
                state.attempts,
                cause,
            )
            await asyncio.sleep(delay)

    def _active(self) -> bool:
        return self._running or self.expect_activity

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[httpx.Response]:
        client = self._client
        headers = client._auth_headers()
        headers["Cache-Control"] = "no-store"
        if self._cursor:
            headers["Last-Event-ID"] = self._cursor
        # No transport read timeout: the watchdog keeps ``read_timeout`` (cheaper per chunk).
        timeout = httpx.Timeout(
            client._timeout.connect or 10.0,
            connect=client._timeout.connect,
            read=None,
            pool=client._timeout.pool,
        )
        url = client._url(self._path)
        started = time.monotonic()
        async with httpx_sse.aconnect_sse(
            client._http,
            "GET",
            url,
            params=self._params,
            headers=headers,
            timeout=timeout,
            follow_redirects=False,
        ) as source:
            response = source.response
            request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
            logger.debug(
                "GET %s -> %d [%s] %.1fms (Last-Event-ID=%s)",
                self._path,
                response.status_code,
                request_id,
                (time.monotonic() - started) * 1000,
                self._cursor,
            )
            status = response.status_code
            ctype = response.headers.get("content-type", "")
            if status >= 300:
                body = await _read_limited(response)
                err = error_from_response(
                    status, body, response.headers, method="GET", url=self._path
                )
                retryable = status in (408, 429) or status >= 500
                if retryable and response.headers.get("x-should-retry") != "false":
                    raise _Retryable(err, err.retry_after)
                raise err
            if "text/event-stream" not in ctype.split(";")[0].strip().lower():
                body = await _read_limited(response)
                raise StreamContentTypeError(
                    ctype,
                    status_code=status,
                    body=body,
                    request_id=request_id,
                    last_event_id=self._cursor,
                )
            yield response


def _body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it arrives.

    Under the default transport the chunks are read straight from aiohttp's
    buffer: httpx's own iteration adds four generator layers per chunk, which at
    thousands of small chunks a second (many sessions, one event each) is most
    of the client's CPU. Any other transport goes through httpx as usual.
    """
    encoding = response.headers.get("content-encoding", "identity")
    if encoding != "identity":
        return response.aiter_bytes()
    stream = getattr(response.stream, "_stream", None)  # httpx's BoundAsyncStream wraps it
    native = getattr(stream, "_aiohttp_response", None)
    if isinstance(stream, AiohttpResponseStream) and isinstance(native, aiohttp.ClientResponse):
        return native.content.iter_any()
    return response.aiter_raw()


class _Retryable(Exception):
    """Internal: a stream answer worth reconnecting after (429, 5xx...)."""

    def __init__(self, cause: APIStatusError, retry_after: float | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after


async def _read_limited(response: httpx.Response, limit: int = _ERROR_BODY_LIMIT) -> bytes:
    """Read at most ``limit`` bytes of an error body (a gateway may send megabytes of HTML)."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except TRANSPORT_ERRORS:
        pass  # a truncated error body still names the status
    return b"".join(parts)[:limit]


def _connection_error(exc: BaseException, method: str, path: str) -> APIConnectionError:
    timeout = isinstance(exc, httpx.TimeoutException | TimeoutError) and not isinstance(
        exc, httpx.ConnectTimeout
    )
    if isinstance(exc, httpx.ConnectTimeout) and isinstance(exc.__cause__, TimeoutError):
        timeout = True
    cls = APITimeoutError if timeout else APIConnectionError
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    err = cls(
        f"{'Request timed out' if timeout else 'Connection error'} ({detail})",
        method=method,
        url=path,
    )
    err.__cause__ = exc
    return err


# --------------------------------------------------------------------------- resources


class _Resource:
    def __init__(self, client: QoderClient) -> None:
        self._client = client


class SessionEvents(_Resource):
    """``client.sessions.events``: send, list and stream a session's events."""

    async def send(
        self,
        session_id: str,
        events: OutboundEvent | Mapping[str, Any] | Sequence[OutboundEvent | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Post events (``POST /sessions/{id}/events``); returns the 202 handle.

        ``events`` is one event or a list: :class:`UserMessage` and the other
        ``user.*`` models, or raw JSON objects. Every send carries an
        ``Idempotency-Key`` (yours, or a fresh one reused across retries), so a
        retried send is stored once. A busy session raises
        :class:`SessionBusyError` (never retried).
        """
        if isinstance(events, Mapping) or not isinstance(events, Sequence):
            events = [events]
        if not events:
            raise ConfigurationError("send needs at least one event")
        payload = [ev if isinstance(ev, Mapping) else unstructure_event(ev) for ev in events]
        key = idempotency_key or uuid.uuid4().hex
        body, headers = await self._client._request_full(
            "POST",
            f"/sessions/{_seg(session_id)}/events",
            json={"events": payload},
            idempotency_key=key,
        )
        data = body.get("data") if isinstance(body, Mapping) else body
        if not isinstance(data, list):
            raise APIResponseValidationError(
                "a send answer must carry the created events in 'data'",
                method="POST",
                url=f"/sessions/{session_id}/events",
                body=body,
            )
        try:
            created = tuple(structure_event(item) for item in data)
        except ShapeError as exc:
            raise APIResponseValidationError(
                f"unexpected event in a send answer: {exc}", method="POST", body=body
            ) from exc
        return Accepted(
            events=created,
            request_id=headers.get("x-request-id") or headers.get("request-id"),
            idempotency_key=key,
        )

    def list(
        self,
        session_id: str,
        *,
        order: Literal["asc", "desc"] | None = None,
        limit: int | None = None,
        types: Sequence[str] | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
    ) -> AsyncPaginator[Event]:
        """Iterate the session's stored events (history), fetching pages as needed."""
        params = _list_params(
            order=order, limit=limit, after_id=after_id, before_id=before_id, types=types
        )
        return AsyncPaginator(
            self._client, f"/sessions/{_seg(session_id)}/events", params, structure_event
        )

    def stream(
        self,
        session_id: str,
        *,
        last_event_id: str | None = None,
        event_deltas: Iterable[str] = (),
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_STREAM_READ_TIMEOUT,
        reconnect: ReconnectPolicy | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        cursor_store: CursorStore | None = None,
    ) -> EventStream:
        """Follow the session's events (SSE), reconnecting and resuming by itself.

        Without ``last_event_id`` (or a cursor in ``cursor_store``) the server
        first replays the whole history. ``event_deltas`` (``"agent.message"``,
        ``"agent.thinking"``) adds live previews (:class:`EventStart`,
        :class:`EventDelta`) to this connection. See :class:`EventStream`.
        """
        self._client._check_open()
        return EventStream(
            self._client,
            session_id,
            last_event_id=last_event_id,
            event_deltas=event_deltas,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
            read_timeout=read_timeout,
            reconnect=reconnect,
            max_event_bytes=max_event_bytes,
            cursor_store=cursor_store,
        )


class Sessions(_Resource):
    """``client.sessions``: create, retrieve, update, list, cancel, archive, delete."""

    def __init__(self, client: QoderClient) -> None:
        super().__init__(client)
        self.events = SessionEvents(client)

    async def create(
        self,
        *,
        agent: str | Mapping[str, Any],
        environment_id: str,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        incremental_streaming_enabled: bool | None = None,
        initial_events: Sequence[OutboundEvent | Mapping[str, Any]] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """Create a session; ``agent`` is an agent id or ``{"type": "agent", "id": ...}``."""
        body: dict[str, Any] = {"agent": agent, "environment_id": environment_id}
        _put(body, title=title, metadata=metadata)
        _put(body, incremental_streaming_enabled=incremental_streaming_enabled)
        if initial_events is not None:
            body["initial_events"] = [
                e if isinstance(e, Mapping) else unstructure_event(e) for e in initial_events
            ]
        body.update(extra_body or {})
        return await self._client._call(
            "POST", "/sessions", structure_session, json=body, idempotency_key=idempotency_key
        )

    async def retrieve(self, session_id: str) -> Session:
        """Fetch a session."""
        return await self._client._call("GET", f"/sessions/{_seg(session_id)}", structure_session)

    async def update(
        self,
        session_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Session:
        """Update a session's title, metadata or other fields (``extra_body``)."""
        body: dict[str, Any] = {}
        _put(body, title=title, metadata=metadata)
        body.update(extra_body or {})
        return await self._client._call(
            "POST", f"/sessions/{_seg(session_id)}", structure_session, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
        include_archived: bool | None = None,
        agent_id: str | None = None,
        statuses: Sequence[str] | None = None,
    ) -> AsyncPaginator[Session]:
        """Iterate sessions, fetching pages as needed."""
        params = _list_params(
            limit=limit,
            order=order,
            include_archived=include_archived,
            agent_id=agent_id,
            statuses=statuses,
        )
        return AsyncPaginator(self._client, "/sessions", params, structure_session)

    async def cancel(self, session_id: str) -> Session:
        """Cancel the running turn, if any (a no-op on an idle session)."""
        return await self._client._call(
            "POST", f"/sessions/{_seg(session_id)}/cancel", structure_session
        )

    async def archive(self, session_id: str) -> Session:
        """Archive a session: it keeps its history and accepts no new events."""
        return await self._client._call(
            "POST", f"/sessions/{_seg(session_id)}/archive", structure_session
        )

    async def delete(self, session_id: str) -> DeletedSession:
        """Delete a session (where the server supports it; otherwise archive it)."""
        return await self._client._call(
            "DELETE", f"/sessions/{_seg(session_id)}", structure_deleted_session
        )


class Agents(_Resource):
    """``client.agents``: create, retrieve, update, list, archive."""

    async def create(
        self,
        *,
        name: str,
        model: str | Mapping[str, Any],
        system: str | None = None,
        description: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        """Create an agent (``model``: ``"auto"``, ``"ultimate"``... or ``{"id": ...}``)."""
        body: dict[str, Any] = {"name": name, "model": model}
        _put(body, system=system, description=description, metadata=metadata)
        if tools is not None:
            body["tools"] = list(tools)
        body.update(extra_body or {})
        return await self._client._call(
            "POST", "/agents", structure_agent, json=body, idempotency_key=idempotency_key
        )

    async def retrieve(self, agent_id: str, *, version: int | None = None) -> Agent:
        """Fetch an agent (its latest version unless ``version`` is given)."""
        params = _list_params(version=version)
        return await self._client._call(
            "GET", f"/agents/{_seg(agent_id)}", structure_agent, params=params
        )

    async def update(self, agent_id: str, **fields: Any) -> Agent:
        """Update an agent; pass the current ``version`` for optimistic concurrency."""
        return await self._client._call(
            "POST", f"/agents/{_seg(agent_id)}", structure_agent, json=fields
        )

    def list(
        self, *, limit: int | None = None, include_archived: bool | None = None
    ) -> AsyncPaginator[Agent]:
        """Iterate agents, fetching pages as needed."""
        params = _list_params(limit=limit, include_archived=include_archived)
        return AsyncPaginator(self._client, "/agents", params, structure_agent)

    async def archive(self, agent_id: str) -> Agent:
        """Archive an agent."""
        return await self._client._call(
            "POST", f"/agents/{_seg(agent_id)}/archive", structure_agent
        )


class Environments(_Resource):
    """``client.environments``: create, retrieve, list, archive."""

    async def create(
        self,
        *,
        name: str,
        config: Mapping[str, Any] | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Environment:
        """Create an environment (``config`` defaults to ``{"type": "cloud"}``)."""
        body: dict[str, Any] = {"name": name, "config": dict(config or {"type": "cloud"})}
        _put(body, description=description, metadata=metadata)
        body.update(extra_body or {})
        return await self._client._call(
            "POST",
            "/environments",
            structure_environment,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def retrieve(self, environment_id: str) -> Environment:
        """Fetch an environment."""
        return await self._client._call(
            "GET", f"/environments/{_seg(environment_id)}", structure_environment
        )

    def list(
        self, *, limit: int | None = None, include_archived: bool | None = None
    ) -> AsyncPaginator[Environment]:
        """Iterate environments, fetching pages as needed."""
        params = _list_params(limit=limit, include_archived=include_archived)
        return AsyncPaginator(self._client, "/environments", params, structure_environment)

    async def archive(self, environment_id: str) -> Environment:
        """Archive an environment."""
        return await self._client._call(
            "POST", f"/environments/{_seg(environment_id)}/archive", structure_environment
        )


def _put(body: dict[str, Any], **values: Any) -> None:
    for key, value in values.items():
        if value is not None:
            body[key] = dict(value) if isinstance(value, Mapping) else value


# --------------------------------------------------------------------------- the client


class QoderClient:
    """The asyncio client for Qoder Cloud Agents.

    ::

        async with QoderClient() as client:          # token from QODER_PAT
            session = client.session("sess_...")
            turn = await session.send("Help me analyze this code.")
            async for event in turn:                 # this turn's events only
                print(event.type)
            print((await turn.result()).text)

    Arguments: ``token`` (else ``QODER_PAT``, else ``QODER_ACCESS_TOKEN``);
    ``base_url`` (else ``QODER_BASE_URL``, else the international endpoint;
    plain ``http://`` only to loopback unless ``allow_insecure_http``);
    ``http_client`` (an ``httpx.AsyncClient`` to borrow: never closed by us);
    ``timeout`` for JSON requests (streams use ``stream_read_timeout`` per
    read); ``retry`` (:class:`RetryPolicy`, or ``max_retries``); ``reconnect``
    (:class:`ReconnectPolicy` for streams); ``default_headers``.

    Resources mirror the HTTP API: ``client.sessions`` (with
    ``client.sessions.events``), ``client.agents``, ``client.environments``.
    The turn API starts at :meth:`session`. Use :meth:`with_options` for
    per-call retry or timeout settings.
    """

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        reconnect: ReconnectPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        token_value = _resolve_token(token)
        self.base_url = _resolve_base_url(base_url, allow_insecure_http)
        if isinstance(timeout, httpx.Timeout):
            self._timeout = timeout
        elif timeout is not None:
            self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        else:
            self._timeout = DEFAULT_TIMEOUT
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = RetryPolicy(
                max_retries=max_retries,
                backoff=policy.backoff,
                max_retry_after=policy.max_retry_after,
            )
        self.retry_policy = policy
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self._token = _Secret(
            token_value,
            {
                "User-Agent": f"qoder-async/{__version__}",
                "Accept": "application/json",
                **dict(default_headers or {}),
            },
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=AiohttpTransport(limits=DEFAULT_LIMITS),
            timeout=self._timeout,
            follow_redirects=False,
        )
        self._state: dict[str, Any] = {"closed": False, "sessions": {}}
        self._rand = random.Random()
        self.sessions = Sessions(self)
        self.agents = Agents(self)
        self.environments = Environments(self)

    def __repr__(self) -> str:
        return f"QoderClient(base_url={self.base_url!r})"

    # -- lifecycle

    async def __aenter__(self) -> QoderClient:
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return bool(self._state["closed"])

    async def aclose(self) -> None:
        """Close every session pump and stream this client opened, then its HTTP client.

        A borrowed ``http_client`` is left open. Idempotent.
        """
        if self._state["closed"]:
            return
        self._state["closed"] = True
        sessions: dict[str, SessionHandle] = self._state["sessions"]
        for handle in list(sessions.values()):
            await handle.aclose()
        sessions.clear()
        if self._owns_http:
            await self._http.aclose()

    def _check_open(self) -> None:
        if self._state["closed"]:
            raise ClientClosedError("this QoderClient is closed; create a new one")

    def with_options(
        self,
        *,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> QoderClient:
        """A client sharing this one's connections, with other retry or timeout settings.

        ``await client.with_options(max_retries=5).sessions.retrieve(id)``.
        Closing the copy does not close the shared connections.
        """
        twin = object.__new__(QoderClient)
        twin.__dict__.update(self.__dict__)
        twin._owns_http = False
        if timeout is not None:
            twin._timeout = (
                timeout
                if isinstance(timeout, httpx.Timeout)
                else httpx.Timeout(timeout, connect=min(timeout, 10.0))
            )
        policy = retry or self.retry_policy
        if max_retries is not None:
            policy = RetryPolicy(
                max_retries=max_retries,
                backoff=policy.backoff,
                max_retry_after=policy.max_retry_after,
            )
        twin.retry_policy = policy
        twin.sessions = Sessions(twin)
        twin.agents = Agents(twin)
        twin.environments = Environments(twin)
        return twin

    # -- the turn API

    def session(
        self,
        session_id: str,
        *,
        event_deltas: Iterable[str] = ("agent.message",),
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        queue_size: int = 1024,
    ) -> SessionHandle:
        """A handle on a session for the turn API (no I/O until you send or listen).

        One handle (and one SSE connection) per session id and client: asking
        again returns the same handle (the options of the first call apply).
        ``event_deltas`` selects the live previews its connection asks for
        (``text_stream()`` uses them); ``stall_timeout``/``max_stalls`` are the
        connection's stall rules (see :class:`EventStream`); ``queue_size``
        bounds each listener's queue.
        """
        from ._session import SessionHandle

        self._check_open()
        sessions: dict[str, SessionHandle] = self._state["sessions"]
        handle = sessions.get(session_id)
        if handle is None:
            handle = SessionHandle(
                self,
                session_id,
                event_deltas=tuple(event_deltas),
                stall_timeout=stall_timeout,
                max_stalls=max_stalls,
                queue_size=queue_size,
            )
            sessions[session_id] = handle
        return handle

    # -- requests

    def _auth_headers(self) -> dict[str, str]:
        return dict(self._token.headers)

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def _call(
        self,
        method: str,
        path: str,
        item: Callable[[Any], _T],
        *,
        json: Any = None,
        params: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> _T:
        body = await self._request(
            method, path, json=json, params=params, idempotency_key=idempotency_key
        )
        try:
            return item(body)
        except ShapeError as exc:
            raise APIResponseValidationError(
                f"unexpected answer: {exc}", method=method, url=path, body=body
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        body, _ = await self._request_full(
            method, path, json=json, params=params, idempotency_key=idempotency_key
        )
        return body

    async def _request_full(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """One logical request with retries; returns the parsed body and the headers."""
        self._check_open()
        headers = self._auth_headers()
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        content: bytes | None = None
        if json is not None:
            content = json_dumps(json)
            headers["Content-Type"] = "application/json"
        url = self._url(path)
        debug = logger.isEnabledFor(logging.DEBUG)
        policy = self.retry_policy
        attempt = 0
        while True:
            started = time.monotonic()
            status: int | None = None
            resp_headers: Mapping[str, str] = {}
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method,
                    url,
                    content=content,
                    params=tuple(params) if params else None,
                    headers=headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                )
            except TRANSPORT_ERRORS as exc:
                error: Exception = _connection_error(exc, method, path)
                logger.debug("%s %s failed: %r", method, path, error)
            else:
                status = response.status_code
                resp_headers = response.headers  # case-insensitive
                if debug:
                    logger.debug(
                        "%s %s -> %d [%s] %.1fms",
                        method,
                        path,
                        status,
                        resp_headers.get("x-request-id") or resp_headers.get("request-id"),
                        (time.monotonic() - started) * 1000,
                    )
                if status < 300:
                    return self._parse(response, method, path), resp_headers
                error = error_from_response(
                    status,
                    response.content[:_ERROR_BODY_LIMIT],
                    resp_headers,
                    method=method,
                    url=path,
                    error_class_override=_conflict_class(status, response, path, method),
                )
                retry_after = parse_retry_after(resp_headers)
            delay = policy.delay(
                attempt=attempt,
                method=method,
                idempotent=idempotency_key is not None,
                status=status,
                headers=resp_headers,
                retry_after=retry_after,
                rand=self._rand.random(),
            )
            if delay is None:
                raise error
            attempt += 1
            logger.debug(
                "retrying %s %s in %.2fs (retry %d of %d) after %s",
                method,
                path,
                delay,
                attempt,
                policy.max_retries,
                status if status is not None else type(error).__name__,
            )
            await asyncio.sleep(delay)

    def _parse(self, response: httpx.Response, method: str, path: str) -> Any:
        content = response.content
        if not content:
            return {}
        try:
            return json_loads(content)
        except ValueError as exc:
            raise APIResponseValidationError(
                f"the answer is not JSON (status {response.status_code}, "
                f"content-type {response.headers.get('content-type')!r})",
                method=method,
                url=path,
                body=content[:200].decode("utf-8", errors="replace"),
            ) from exc


def _conflict_class(
    status: int, response: httpx.Response, path: str, method: str
) -> type[APIStatusError] | None:
    if status != 409:
        return None
    text = response.content[:_ERROR_BODY_LIMIT].decode("utf-8", errors="replace").lower()
    if "idempotency" in text:
        return IdempotencyConflictError
    if method == "POST" and path.endswith("/events"):
        return SessionBusyError
    return ConflictError
