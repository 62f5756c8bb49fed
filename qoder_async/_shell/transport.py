"""SHELL: the transport protocol and its two adapters (aiohttp by default, httpx on request).

A transport does two things and nothing else: *send a request* (status,
headers, body back) and *open a stream* (status, headers, an async iterator of
body chunks). Everything above it (URLs, the token, retries, what a status
means, SSE) is the same for both adapters; everything library-specific,
including how a library's exceptions read as ours, lives here and only here.

=========================  ===============================  =============================
                           :class:`AiohttpTransport`         :class:`HttpxTransport`
=========================  ===============================  =============================
when                       the default, or                  ``http_client=httpx.AsyncClient``
                           ``http_client=aiohttp.ClientSession``  (proxies, hooks, mounts)
requests                   ``ClientSession.request``        ``AsyncClient.request``
streams, and other         ``ClientSession.request`` +      ``AsyncClient.send(stream=True)``
streamed answers           ``content.iter_chunked(64 KiB)``  + ``response.aiter_bytes()``
(``open``: downloads)
streamed request bodies    ``data=`` an async iterable      ``content=`` an async iterable
``bare`` requests (no      a session sharing the            an ``httpx.Request`` built
client defaults)           connector, no cookies            directly, ``auth=None``
redirects                  never followed                   never followed
a request's total timeout  aiohttp's own timer under 5 s;   ``asyncio.timeout``
                           from 5 s, one shared timer
                           checks them once a second
a borrowed client          never closed by us               never closed by us
=========================  ===============================  =============================

Connection failures become :class:`APIConnectionError` (or
:class:`APITimeoutError`) with a message that says what happened (refused, DNS,
TLS, timeout) and where (host and port); a caller never sees a library's
exception. A streamed request body whose own source failed raises
:class:`SourceError` instead (aiohttp wraps it in a connection error, httpx lets
it through: both adapters hand it on as it is), so it is never taken for the
network's failure, nor retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeAlias
from urllib.parse import urlsplit

import aiohttp
from attrs import frozen

from qoder_async._core.errors import APIConnectionError, APITimeoutError

try:  # the optional transport: pip install "qoder-async[httpx]"
    import httpx
except ImportError:  # pragma: no cover - exercised only without the extra
    httpx = None  # type: ignore[assignment]

__all__ = [
    "AiohttpTransport",
    "Content",
    "HttpxTransport",
    "Response",
    "SourceError",
    "StreamResponse",
    "Timeout",
    "Transport",
    "transport_for",
]

Params = Sequence[tuple[str, str]]
Content: TypeAlias = bytes | AsyncIterable[bytes]
"""A request body: bytes, or an async iterable of chunks sent as they come.

An iterable is iterated afresh (``__aiter__``) by every attempt, so a retry
resends the whole body when the iterable can start over.
"""
_new_tuple = tuple.__new__


@frozen
class Timeout:
    """Timeouts of JSON requests: ``total`` seconds per attempt, ``connect`` to open a socket.

    Streams use ``connect`` only; how long a stream may be silent is the
    stream's ``read_timeout`` and ``stall_timeout``. ``None`` means no limit.
    """

    total: float | None = 60.0
    connect: float | None = 10.0


class Response(NamedTuple):
    """A whole answer: status, case-insensitive headers, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class StreamResponse(NamedTuple):
    """An answer whose body arrives as chunks (read them with ``async for``)."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]


class Transport(Protocol):
    """What the request layer needs from an HTTP library (see the module table).

    ``errors`` are the exceptions that mean "the connection failed" while a body
    is read; ``connection_error`` turns one into ours.
    """

    errors: tuple[type[BaseException], ...]

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
    ) -> Response:
        """Send a request and read its whole answer."""
        ...

    def open(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
        bare: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """Send a request and read its answer's body as it arrives (not SSE: downloads).

        ``bare`` sends ``headers`` and nothing else of the client's own defaults
        (headers, auth, cookies): for URLs of another origin.
        """
        ...

    def stream(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        timeouts: Timeout,
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """Open a request whose answer's body is read as it arrives."""
        ...

    def connection_error(self, exc: BaseException, method: str, url: str) -> APIConnectionError:
        """Our error for a library's connection failure (refused, DNS, TLS, reset, timeout)."""
        ...

    async def aclose(self) -> None:
        """Close what this transport owns (a borrowed client is left open)."""
        ...


def _describe(exc: BaseException, url: str) -> tuple[str, bool]:
    """(what happened, was it a timeout) for any connection failure, both libraries."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    # aiohttp < 3.10.10 has no ClientConnectorDNSError: there a failed lookup is a plain
    # ClientConnectorError caused by the resolver's socket.gaierror (found by name below).
    dns_error: type[Exception] = getattr(aiohttp, "ClientConnectorDNSError", socket.gaierror)
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            why = getattr(err, "verify_message", None) or getattr(
                getattr(err, "certificate_error", None), "verify_message", None
            )
            return f"TLS certificate of {where} could not be verified ({why or err})", False
        if isinstance(err, ssl.SSLError):
            return f"TLS handshake with {where} failed ({err.reason or err})", False
        if isinstance(err, aiohttp.ClientSSLError):
            return f"TLS handshake with {where} failed", False
        if isinstance(err, dns_error) or "gaierror" in type(err).__name__:
            return f"could not resolve the host {parts.hostname!r} (DNS)", False
        if isinstance(err, ConnectionRefusedError) or getattr(err, "errno", None) == (
            errno.ECONNREFUSED
        ):
            return (
                f"connection refused by {where} (is the server running, is the base URL right?)",
                False,
            )
    for err in chain:
        if isinstance(err, aiohttp.ConnectionTimeoutError) or (
            httpx is not None and isinstance(err, httpx.ConnectTimeout | httpx.PoolTimeout)
        ):
            return f"connecting to {where} timed out", True
        if isinstance(err, TimeoutError) or (
            httpx is not None and isinstance(err, httpx.TimeoutException)
        ):
            return f"no answer from {where} in time", True
        if isinstance(err, aiohttp.ServerDisconnectedError) or (
            httpx is not None and isinstance(err, httpx.RemoteProtocolError)
        ):
            return f"{where} closed the connection", False
        if isinstance(err, ConnectionResetError):  # aiohttp's ClientConnectionResetError too
            return f"the connection to {where} was reset", False
        if isinstance(err, aiohttp.ClientPayloadError):
            return f"the answer from {where} was cut off", False
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"connection to {where} failed ({detail})", False


class SourceError(Exception):
    """Raised by a streamed request body when its source failed; ``error`` is the source's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _raise_source_error(exc: BaseException) -> None:
    """Hand on the :class:`SourceError` a library wrapped as a connection failure, if any."""
    current: BaseException | None = exc
    for _ in range(6):
        if current is None:
            return
        if isinstance(current, SourceError):
            raise current from None
        current = current.__cause__ or current.__context__


def _connection_error(exc: BaseException, method: str, url: str) -> APIConnectionError:
    text, timed_out = _describe(exc, url)
    path = urlsplit(url).path
    cls = APITimeoutError if timed_out else APIConnectionError
    err = cls(text[:1].upper() + text[1:], method=method, url=path)
    err.__cause__ = exc
    return err


# --------------------------------------------------------------------------- aiohttp

# Enough sockets for thousands of concurrent session streams (aiohttp's default is 100).
_CONNECTOR_LIMIT = 0
# Stream bodies are read at most this much at a time. ``iter_any()`` hands over
# everything buffered (hundreds of KiB after a burst), and a read's frames are cut
# up at once: a bound keeps that work and its memory per read small. (Before
# events were decoded lazily this was ~9% of medium-event throughput; since then
# the two measure the same.)
_STREAM_READ = 64 * 1024
# A request's total timeout of this many seconds or more is watched by one timer per
# transport that looks at the requests in flight every _DEADLINE_TICK seconds, instead
# of the timer aiohttp arms and cancels for every request (5 us a request here: 7% of
# the requests per second at 50 concurrent sends). aiohttp rounds such deadlines up to
# the next whole second anyway (ceil_threshold), so they fire within a tick either way.
_SHARED_DEADLINE_FROM = 5.0
_DEADLINE_TICK = 1.0


class _Deadlines:
    """The total deadlines of the requests in flight, checked once a tick by one timer.

    A request that is late is cancelled, like ``asyncio.timeout`` does it; the
    request sees that the cancellation is ours (:meth:`leave` is true) and takes
    it back with ``Task.uncancel``.
    """

    __slots__ = ("_expired", "_handle", "_pending")

    def __init__(self) -> None:
        self._pending: dict[object, tuple[asyncio.Task[Any], float]] = {}
        self._expired: set[object] = set()
        self._handle: asyncio.TimerHandle | None = None

    def enter(self, token: object, task: asyncio.Task[Any], deadline: float) -> None:
        self._pending[token] = (task, deadline)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(_DEADLINE_TICK, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def leave(self, token: object) -> bool:
        """Forget ``token``'s request; true when its deadline cancelled it."""
        del self._pending[token]
        if token in self._expired:
            self._expired.discard(token)
            return True
        return False

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for token, (task, deadline) in list(self._pending.items()):
            if deadline <= now and token not in self._expired:
                self._expired.add(token)
                task.cancel()
        self._handle = loop.call_later(_DEADLINE_TICK, self._tick) if self._pending else None


class AiohttpTransport:
    """The default transport: ``aiohttp.ClientSession`` directly, no layer in between.

    With ``session=None`` a session is created on first use (inside the running
    loop, as aiohttp requires) and closed by :meth:`aclose`; a borrowed session
    is never closed.
    """

    errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owned = session is None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._deadlines = _Deadlines()
        self._bare: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_CONNECTOR_LIMIT, limit_per_host=0)
            )
        return session

    def _timeout(self, total: float | None, connect: float | None) -> aiohttp.ClientTimeout:
        key = (total, connect)
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(total=total, connect=connect)
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
    ) -> Response:
        total, connect = timeouts.total, timeouts.connect
        if (
            total is None
            or total < _SHARED_DEADLINE_FROM
            or (connect is not None and total < connect + 2 * _DEADLINE_TICK)
        ):
            # Short totals stay exact; so does a total that could end while connecting.
            limits = self._timeout(total, connect)
            return await self._request(method, url, params, headers, content, limits)
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs in a task of a running loop
        deadlines, token = self._deadlines, object()
        deadlines.enter(token, task, asyncio.get_running_loop().time() + total)
        try:
            answer = await self._request(
                method, url, params, headers, content, self._timeout(None, connect)
            )
        except asyncio.CancelledError as exc:
            if deadlines.leave(token) and task.uncancel() == 0:
                late = TimeoutError(f"no answer within {total} s")
                late.__cause__ = exc
                raise _connection_error(late, method, url) from late
            raise
        except BaseException:
            if deadlines.leave(token):
                task.uncancel()  # expired as it failed anyway: that error stands
            raise
        if deadlines.leave(token):
            task.uncancel()  # expired as it completed: the answer stands
        return answer

    async def _request(
        self,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        limits: aiohttp.ClientTimeout,
    ) -> Response:
        try:
            async with self._client().request(
                method,
                url,
                params=params,
                headers=headers,
                data=content,
                timeout=limits,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                # tuple.__new__: a NamedTuple's own __new__ is a Python function
                return _new_tuple(Response, (resp.status, resp.headers, body))
        except self.errors as exc:
            _raise_source_error(exc)
            raise _connection_error(exc, method, url) from exc

    def stream(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        timeouts: Timeout,
    ) -> _AiohttpStream:
        return _AiohttpStream(self, (method, url, params, headers, None, timeouts.connect, False))

    def _bare_client(self) -> aiohttp.ClientSession:
        # The same connection pool, without the session's default headers, auth or cookies.
        bare = self._bare
        if bare is None:
            bare = self._bare = aiohttp.ClientSession(
                connector=self._client().connector,
                connector_owner=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return bare

    def open(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
        bare: bool = False,
    ) -> _AiohttpStream:
        return _AiohttpStream(self, (method, url, params, headers, content, timeouts.connect, bare))

    def connection_error(self, exc: BaseException, method: str, url: str) -> APIConnectionError:
        return _connection_error(exc, method, url)

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        self._deadlines.close()
        bare, self._bare = self._bare, None
        if bare is not None:
            await bare.close()
        session, self._session = self._session, None
        if session is not None and self._owned:
            await session.close()


_Opening: TypeAlias = tuple[
    str, str, Params | None, Mapping[str, str], Content | None, float | None, bool
]


class _AiohttpStream:
    """:meth:`AiohttpTransport.stream`'s and :meth:`AiohttpTransport.open`'s context manager.

    A class rather than a generator: an open stream keeps its response and
    nothing else (a generator context manager keeps its frame, its arguments
    and itself: ~1 KiB per idle stream, with thousands open).
    """

    __slots__ = ("_request", "_resp", "_transport")

    def __init__(self, transport: AiohttpTransport, request: _Opening) -> None:
        self._transport = transport
        self._request: _Opening | None = request
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        assert self._request is not None, "a stream context is entered once"
        method, url, params, headers, content, connect, bare = self._request
        self._request = None
        transport = self._transport
        client = transport._bare_client() if bare else transport._client()
        try:
            resp = await client.request(
                method,
                url,
                params=params,
                headers=headers,
                data=content,
                timeout=transport._timeout(None, connect),
                allow_redirects=False,
            )
        except transport.errors as exc:
            _raise_source_error(exc)
            raise _connection_error(exc, method, url) from exc
        self._resp = resp
        return StreamResponse(resp.status, resp.headers, resp.content.iter_chunked(_STREAM_READ))

    async def __aexit__(self, *exc_info: object) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()


# --------------------------------------------------------------------------- httpx


class HttpxTransport:
    """The transport for a caller's ``httpx.AsyncClient`` (proxies, event hooks, mounts...).

    Streams are opened as other streamed answers are (:meth:`open`) and read with
    the public ``aiter_bytes()``. The client is borrowed: never closed by us.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self.errors: tuple[type[BaseException], ...] = (httpx.TransportError, OSError, TimeoutError)
        self._timeouts: dict[tuple[float | None, float | None], httpx.Timeout] = {}

    def _timeout(self, read: float | None, connect: float | None) -> httpx.Timeout:
        key = (read, connect)
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = httpx.Timeout(read, connect=connect, pool=connect)
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
    ) -> Response:
        """Send a request and read its whole answer (``total`` bounds the whole of it)."""
        try:
            async with asyncio.timeout(timeouts.total):
                resp = await self._client.request(
                    method,
                    url,
                    params=list(params) if params is not None else None,
                    headers=headers,
                    content=content,
                    timeout=self._timeout(timeouts.total, timeouts.connect),
                    follow_redirects=False,
                )
        except self.errors as exc:
            raise _connection_error(exc, method, url) from exc
        return Response(resp.status_code, resp.headers, resp.content)

    def stream(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        timeouts: Timeout,
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        return self.open(
            method, url, params=params, headers=headers, content=None, timeouts=timeouts
        )

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        headers: Mapping[str, str],
        content: Content | None,
        timeouts: Timeout,
        bare: bool = False,
    ) -> AsyncIterator[StreamResponse]:
        """Send a request and read its answer's body with ``aiter_bytes()``."""
        timeout = self._timeout(None, timeouts.connect)
        if bare:
            # Built directly: build_request would merge the client's headers and cookies.
            request = httpx.Request(
                method,
                url,
                params=list(params) if params is not None else None,
                headers=headers,
                content=content,
                extensions={"timeout": timeout.as_dict()},
            )
        else:
            request = self._client.build_request(
                method,
                url,
                params=list(params) if params is not None else None,
                headers=headers,
                content=content,
                timeout=timeout,
            )
        auth = None if bare else httpx.USE_CLIENT_DEFAULT
        try:
            resp = await self._client.send(request, stream=True, follow_redirects=False, auth=auth)
        except self.errors as exc:
            raise _connection_error(exc, method, url) from exc
        try:
            yield StreamResponse(resp.status_code, resp.headers, resp.aiter_bytes())
        finally:
            with contextlib.suppress(*self.errors):
                await resp.aclose()

    def connection_error(self, exc: BaseException, method: str, url: str) -> APIConnectionError:
        return _connection_error(exc, method, url)

    async def aclose(self) -> None:
        """Nothing to close: the client is the caller's."""


def transport_for(http_client: object) -> Transport:
    """The adapter for a borrowed client (``None``: a new aiohttp session of our own)."""
    if http_client is None:
        return AiohttpTransport()
    if isinstance(http_client, aiohttp.ClientSession):
        return AiohttpTransport(http_client)
    if httpx is not None and isinstance(http_client, httpx.AsyncClient):
        return HttpxTransport(http_client)
    raise TypeError(
        "http_client must be an aiohttp.ClientSession or an httpx.AsyncClient "
        f"(pip install 'qoder-async[httpx]'), got {type(http_client).__name__}"
    )
