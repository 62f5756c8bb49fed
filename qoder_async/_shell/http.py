"""SHELL: the request layer. Token, URLs, headers, the retry loop, and what an answer means.

Every request of the client goes through :meth:`HTTP.request` (JSON) or
:meth:`HTTP.stream` (SSE); the transport underneath only moves bytes. Rules:

======================================  ===============================================
situation                               what happens
======================================  ===============================================
2xx                                     the body parsed as JSON (empty body: ``{}``);
                                        a non-JSON body is APIResponseValidationError
error status                            the typed error (``_errors.error_from_response``,
                                        409s by the conflict table), server text
                                        redacted of the token (and the last tokens
                                        a token callable returned)
404 whose body is not the API's         the error says the base URL may be wrong (it
error envelope                          must end in ``/api/v1/cloud``)
a token callable, no token yet          called before the request (one call shared by
                                        the requests waiting for it)
401 with a token callable (a request,   the callable is called once for every request
a download, a stream (re)connect)       refused with that token, and the request sent
                                        again once with the new token; the callable
                                        raises: the 401 is raised, its ``__cause__``
                                        what the callable raised
connection failure or error status      retried by the :class:`RetryPolicy` (deadline,
                                        ``Retry-After``), with the same headers and the
                                        same ``Idempotency-Key``; each retry logged at
                                        WARNING (method, path, what failed, attempt,
                                        delay, deadline left; no header, no query)
an ``Idempotency-Key`` (or ``X-``) in   it is the request's one key, in any header
``extra_headers``                       case; another key given too:
                                        :class:`ConfigurationError`
a stream answers 408/429/5xx            :class:`StreamRetry` (the stream reconnects)
a stream answers another error, or      the typed error / :class:`StreamContentTypeError`
not ``text/event-stream``               (fatal: reconnecting cannot fix it)
:meth:`HTTP.open` (a download) answers  the typed error, as for a request; 2xx: the
an error status, or 2xx                 body is read by the caller as it arrives
:meth:`HTTP.fetch` (a link of another   only ``User-Agent`` and ``Accept`` go out: no
origin)                                 token, no default headers, no client cookies
used after ``aclose()``                 :class:`ClientClosedError` (a request waiting for
                                        the token callable too: the call is cancelled)
used from another event loop            :class:`WrongEventLoopError` (says what to do)
:meth:`HTTP.tap` (a recorder, e.g.      every request of the client and its copies goes
``qoder_async.testing.record``)         through the wrapped transport until undone; no
                                        cost when none is installed (one attribute read
                                        per request, none per chunk); one at a time
======================================  ===============================================

Copies made by :meth:`HTTP.copy` (``client.with_options(...)``) share the
transport and the lifecycle of their original and own neither: closing a copy
closes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple, TypeAlias
from urllib.parse import quote, urlsplit

from attrs import frozen

from qoder_async._core.backoff import RetryPolicy
from qoder_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    NotFoundError,
    RequestInProgressError,
    StreamContentTypeError,
    WrongEventLoopError,
    error_from_response,
    redact,
    scrub,
)
from qoder_async._core.models import json_dumps, json_loads
from qoder_async._core.version import __version__
from qoder_async._shell.transport import Content, StreamResponse, Timeout, Transport

__all__ = [
    "DEFAULT_BASE_URL",
    "HTTP",
    "APIResponse",
    "Observer",
    "RequestBody",
    "RequestOptions",
    "StreamRetry",
    "TokenSource",
    "idempotency_key_of",
    "resolve_base_url",
    "resolve_token",
    "segment",
]

logger = logging.getLogger("qoder_async")

DEFAULT_BASE_URL = "https://api.qoder.com/api/v1/cloud"
DEFAULT_TIMEOUT = Timeout(total=60.0, connect=10.0)
ERROR_BODY_LIMIT = 64 * 1024
_BASE_PATH = "/api/v1/cloud"
_TRUTHY = ("1", "true", "yes", "on")


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


# --------------------------------------------------------------------------- configuration


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_base_url(base_url: str | None, allow_insecure_http: bool | None) -> str:
    """The base URL: the argument, else ``QODER_BASE_URL``, else the default; checked.

    Plain ``http://`` is refused unless the host is loopback, ``allow_insecure_http``
    is true, or (when it is ``None``) ``QODER_ALLOW_INSECURE_HTTP=1``.
    """
    url = (base_url or os.environ.get("QODER_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    if allow_insecure_http is None:
        allow_insecure_http = (
            os.environ.get("QODER_ALLOW_INSECURE_HTTP", "").strip().lower() in _TRUTHY
        )
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"refusing plain http:// to {parts.hostname}: the token would travel unencrypted. "
            "Use https, or pass allow_insecure_http=True (QODER_ALLOW_INSECURE_HTTP=1) "
            "if you really mean it."
        )
    return url


TokenSource: TypeAlias = str | Callable[[], str | Awaitable[str]]
"""``QoderClient(token=...)``: the token, or a callable (sync or async) returning it."""


def resolve_token(token: TokenSource | None) -> TokenSource:
    """The token: the argument (a callable as it is), else ``QODER_PAT``, else
    ``QODER_ACCESS_TOKEN``; checked."""
    if callable(token):
        return token
    value = token or os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN")
    if not value or not value.strip():
        raise ConfigurationError(
            "no Qoder access token: pass token=..., or set QODER_PAT (or QODER_ACCESS_TOKEN)"
        )
    return _checked(value)


def _checked(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"the token callable must return a non-empty str, got {type(value).__name__}"
        )
    value = value.strip()
    if any(c in value for c in "\r\n\x00"):
        raise ConfigurationError("the access token contains control characters")
    return value


# What quote(safe="") leaves as it is: ids are made of these, and quote() costs ~2 us.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")
# "." and ".." survive quote() and every URL library collapses them (yarl even turns
# %2E back into "."): as an id they would retarget the request to another path.
_DOT_SEGMENTS = (".", "..")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def segment(value: str) -> str:
    """An id as one URL path segment (checked, percent-encoded).

    Refused with :class:`ConfigurationError`: a non-string or empty id, ``.`` and
    ``..`` (they would name another path), and control characters (CR, LF, NUL...).
    """
    if value.__class__ is str and _PLAIN_SEGMENT.fullmatch(value) and value not in _DOT_SEGMENTS:
        return value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"an id must be a non-empty string, got {value!r}")
    if value in _DOT_SEGMENTS:
        raise ConfigurationError(f"{value!r} is not an id: it would retarget the request's path")
    if _CONTROL.search(value):
        raise ConfigurationError(f"an id must not contain control characters, got {value!r}")
    return quote(value, safe="")


class _Secret:
    """Holds the token (or the callable giving it) and the headers that carry it; its
    repr never shows it.

    ``generation`` counts the tokens set (0: none yet, a callable not called).
    :meth:`refresh` asks the callable once for all the requests refused with one
    token (single flight); ``variants`` are the last ``_KEPT`` tokens, as sent,
    for redaction.
    """

    __slots__ = ("_base", "_source", "_task", "generation", "headers", "variants")

    def __init__(self, source: TokenSource, headers: Mapping[str, str]) -> None:
        self._base = dict(headers)
        self.headers = self._base
        self.variants: tuple[str, ...] = ()
        self.generation = 0
        self._task: asyncio.Future[None] | None = None
        self._source: Callable[[], str | Awaitable[str]] | None = None
        if callable(source):
            self._source = source
        else:
            self._set(source)

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    @property
    def refreshable(self) -> bool:
        """Whether a 401 may be answered by asking the callable for a new token."""
        return self._source is not None

    def _set(self, value: str) -> None:
        self.headers = {**self._base, "Authorization": f"Bearer {value}"}
        encoded = quote(value, safe="")
        new = (value,) if encoded == value else (value, encoded)
        self.variants = tuple(dict.fromkeys(new + self.variants))[: 2 * _KEPT]
        self.generation += 1

    async def refresh(self, seen: int) -> None:
        """A token newer than generation ``seen``: the callable is called unless another
        request got one already or is getting it (then that call is awaited).

        Raises what the callable raised, or :class:`ConfigurationError` for a value
        that is not a token.
        """
        if self.generation != seen:
            return
        task = self._task
        if task is None:
            task = self._task = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._fetched)
        await asyncio.shield(task)  # a cancelled waiter leaves the call to the others

    async def _fetch(self) -> None:
        assert self._source is not None
        value = self._source()
        if inspect.isawaitable(value):
            value = await value
        self._set(_checked(value))

    def cancel(self) -> None:
        """Cancel a call of the token callable in progress (the client is closing)."""
        if self._task is not None:
            self._task.cancel()

    def _fetched(self, task: asyncio.Future[None]) -> None:
        self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled


_KEPT = 8  # tokens remembered for redaction (the current one and the 7 before it)


# --------------------------------------------------------------------------- requests


@frozen(kw_only=True)
class RequestOptions:
    """Per-call options: extra headers, query parameters and body fields, a timeout.

    ``extra_body`` fields are merged into a JSON object body (they win).
    """

    extra_headers: Mapping[str, str] | None = None
    extra_query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    extra_body: Mapping[str, Any] | None = None
    timeout: float | Timeout | None = None


_KEY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})


def idempotency_key_of(key: str | None, extra_headers: Mapping[str, str] | None) -> str | None:
    """The one idempotency key of a call: ``idempotency_key=`` or an extra header's.

    ``extra_headers`` may carry the key as ``Idempotency-Key`` or
    ``X-Idempotency-Key`` in any case (the official SDK's form); the caller's
    key always wins over a generated one. Two different keys for one call
    raise :class:`ConfigurationError` (one message must never carry two).
    """
    found = {v for k, v in (extra_headers or {}).items() if k.lower() in _KEY_HEADERS}
    if key is not None:
        found.add(key)
    if len(found) > 1:
        raise ConfigurationError(
            "two different idempotency keys for one request (idempotency_key= and an "
            "Idempotency-Key header): pass it once, as idempotency_key="
        )
    return next(iter(found), None)


@frozen
class RequestBody:
    """A request body that is not JSON (a multipart upload): its bytes and ``Content-Type``.

    ``content`` may be an async iterable of chunks, streamed as they come; it is
    iterated afresh by every attempt. ``length`` becomes ``Content-Length``
    (``None``: sent chunked).
    """

    content: Content
    content_type: str
    length: int | None = None


class APIResponse(NamedTuple):
    """A successful answer: status, headers, the parsed body and the request id."""

    status: int
    headers: Mapping[str, str]
    body: Any
    request_id: str | None


_new_tuple = tuple.__new__
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class StreamRetry(Exception):
    """Internal: a stream answer worth reconnecting after (408, 429, 5xx)."""

    def __init__(self, cause: APIStatusError) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = cause.retry_after


class Observer:
    """What the request layer and the streams report (retries, dropped connections).

    This one ignores it; ``QoderClient`` puts its metrics (``_metrics.Metrics``) in
    ``HTTP.observer``. Called only off the hot path (a retry, a reconnect).
    """

    __slots__ = ()

    def retrying(self, error: BaseException, status: int | None) -> None:
        """A request failed (``status`` when the server answered) and will be retried."""

    def stream_dropped(self, stalled: bool, reconnecting: bool) -> None:
        """A stream's connection ended (``stalled``: no event for ``stall_timeout``); it
        reconnects unless it gives up (``reconnecting`` False)."""


class _Lifecycle:
    """Shared by an :class:`HTTP` and its copies: open or closed, the event loop used,
    and the transport (a recorder's wrapper while one is installed)."""

    __slots__ = ("closed", "loop", "tapped", "transport")

    def __init__(self, transport: Transport) -> None:
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport = transport
        self.tapped = False

    def check(self) -> None:
        if self.closed:
            raise ClientClosedError("this QoderClient is closed; create a new one")
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            if self.loop is not None and not self.loop.is_closed():
                raise WrongEventLoopError(
                    "this QoderClient is used from another event loop than the one it "
                    "started in; a client belongs to one loop: create it inside the loop "
                    "that uses it (one per asyncio.run())"
                )
            if self.loop is not None:
                raise WrongEventLoopError(
                    "this QoderClient's event loop is closed (was asyncio.run() called "
                    "again?): create a new QoderClient inside the running loop, e.g. "
                    "`async with QoderClient() as client:` in your main coroutine"
                )
            self.loop = loop


def _as_timeout(value: float | Timeout | None, default: Timeout) -> Timeout:
    if value is None:
        return default
    if isinstance(value, Timeout):
        return value
    return Timeout(total=float(value), connect=min(float(value), 10.0))


class _Call:
    """One call of :class:`HTTP` (a request, a download, a stream's connection) across its
    attempts: its headers, whose token is renewed in place after a 401, and what
    :meth:`failed` decides a retry by."""

    __slots__ = (
        "attempt",
        "first",
        "headers",
        "http",
        "idempotent",
        "method",
        "path",
        "policy",
        "reauthorized",
        "token_at",
    )

    def __init__(self, http: HTTP, method: str, path: str) -> None:
        secret = http._secret
        self.http = http
        self.method = method
        self.path = path
        self.headers = dict(secret.headers)
        self.token_at = secret.generation
        self.reauthorized = not secret.refreshable
        self.policy = http.retry
        self.idempotent = False
        self.first = http.clock()
        self.attempt = 0

    async def reauthorize(self, refused: APIStatusError) -> bool:
        """After a 401: a newer token in :attr:`headers` (one call of the callable for
        every request refused with that token) and True; False after the first time."""
        if self.reauthorized:
            return False
        self.reauthorized = True
        http = self.http
        await http._renewed(refused, self.token_at, self.method, self.path)
        secret = http._secret
        self.headers["Authorization"] = secret.headers["Authorization"]
        self.token_at = secret.generation
        return True

    async def failed(
        self, error: BaseException, status: int | None, headers: Mapping[str, str]
    ) -> None:
        """The one place a failed attempt is retried or not: returns when the next
        attempt may go (at once with a new token after a first 401, else after the
        policy's delay); raises ``error`` when none may.

        A retry is logged at WARNING: the request (method and path: never a
        header or the query), what failed, the attempt, the delay and how much
        of the retry deadline is left.
        """
        if status == 401 and isinstance(error, APIStatusError) and await self.reauthorize(error):
            return
        http, policy = self.http, self.policy
        elapsed = http.clock() - self.first
        delay = policy.delay(
            attempt=self.attempt,
            elapsed=elapsed,
            method=self.method,
            idempotent=self.idempotent,
            status=status,
            headers=headers,
            retry_after=error.retry_after if isinstance(error, APIStatusError) else None,
            rand=http.rand(),
            in_progress=isinstance(error, RequestInProgressError),
        )
        if delay is None:
            raise error
        what = error.message if isinstance(error, APIError) else type(error).__name__
        if status is not None:
            what = f"{status}: {what}"
        left = (
            "no retry deadline"
            if policy.timeout is None
            else f"{max(0.0, policy.timeout - elapsed):.1f}s of the retry deadline left"
        )
        logger.warning(
            "%s %s failed (attempt %d): %s; retrying in %.2fs (%s)",
            self.method,
            self.path,
            self.attempt + 1,
            " ".join(what.split())[:300],
            delay,
            left,
        )
        http.observer.retrying(error, status)
        self.attempt += 1
        await http.sleep(delay)


class HTTP:
    """The request layer shared by every resource of a client (see the module table).

    ``clock``, ``sleep`` and ``rand`` are injectable so retry tests need no real waiting.
    """

    observer: Observer = Observer()  # the client's metrics replace it (shared by copies)

    def __init__(
        self,
        *,
        token: TokenSource,
        base_url: str,
        transport: Transport,
        timeout: float | Timeout | None = None,
        retry: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url
        self.timeout = _as_timeout(timeout, DEFAULT_TIMEOUT)
        self.retry = retry or RetryPolicy()
        self._secret = _Secret(
            token,
            {
                "User-Agent": f"qoder-async/{__version__}",
                "Accept": "application/json",
                **dict(default_headers or {}),
            },
        )
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self._life = _Lifecycle(transport)
        self._owner = True
        self._stream_timeout = Timeout(total=None, connect=self.timeout.connect)

    def __repr__(self) -> str:
        return f"HTTP(base_url={self.base_url!r})"

    def copy(
        self, *, retry: RetryPolicy | None = None, timeout: float | Timeout | None = None
    ) -> HTTP:
        """A copy with other settings, sharing the transport and the lifecycle (owning neither)."""
        twin = object.__new__(HTTP)
        twin.__dict__.update(self.__dict__)
        twin.retry = retry or self.retry
        twin.timeout = _as_timeout(timeout, self.timeout)
        twin._stream_timeout = Timeout(total=None, connect=twin.timeout.connect)
        twin._owner = False
        return twin

    @property
    def transport(self) -> Transport:
        """The transport every request goes through (shared by the copies)."""
        return self._life.transport

    def tap(self, wrap: Callable[[Transport], Transport]) -> Callable[[], None]:
        """Send every request of this client and its copies through ``wrap(transport)``.

        The hook of ``qoder_async.testing.record`` (a recorder wraps the
        transport and sees each exchange, its bytes included, as the transport
        moves them). Requests and streams opened from now on use the wrapper;
        the returned function puts the transport back. One tap at a time:
        a second raises :class:`ConfigurationError`.
        """
        life = self._life
        if life.tapped:
            raise ConfigurationError("this client is already being recorded (one tap at a time)")
        inner = life.transport
        life.transport, life.tapped = wrap(inner), True

        def undo() -> None:
            life.transport, life.tapped = inner, False

        return undo

    # -- lifecycle

    @property
    def closed(self) -> bool:
        """True once the owning client was closed."""
        return self._life.closed

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` or :class:`WrongEventLoopError` if unusable."""
        self._life.check()

    async def aclose(self) -> None:
        """Close the transport (only the original; copies close nothing). Idempotent."""
        if not self._owner or self._life.closed:
            return
        self._life.closed = True
        self._secret.cancel()
        await self.transport.aclose()

    # -- building blocks

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never leave in an error or a log line (the token, as sent)."""
        return self._secret.variants

    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        """A fresh copy of the headers every request carries (the token included)."""
        return dict(self._secret.headers)

    async def _call(self, method: str, path: str) -> _Call:
        """A new call: the client checked usable, a first token got (one call of the
        token callable, shared)."""
        self._life.check()
        if not self._secret.generation:
            await self._renewed(None, 0, method, path)
        return _Call(self, method, path)

    async def _renewed(
        self, refused: APIStatusError | None, seen: int, method: str, path: str
    ) -> None:
        try:
            await self._secret.refresh(seen)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._life.closed and task is not None and not task.cancelling():
                # The call was cancelled by aclose(), not this request's task.
                raise ClientClosedError(
                    "this QoderClient was closed while its token callable ran"
                ) from None
            raise
        except ConfigurationError:
            raise
        except Exception as exc:
            # The request fails as refused: the server's 401, or (no token yet, nothing
            # sent) one of ours; the callable's error is the cause. Never its text.
            if refused is None:
                refused = AuthenticationError(
                    f"the token callable raised {type(exc).__name__}; the request was not sent",
                    status_code=401,
                    error_type="authentication_error",
                    method=method,
                    url=path,
                )
            raise refused from exc

    def _parse(
        self, body: bytes, status: int, headers: Mapping[str, str], method: str, path: str
    ) -> Any:
        if not body:
            return {}
        try:
            return json_loads(body)
        except ValueError as exc:
            ctype = headers.get("content-type")
            raise APIResponseValidationError(
                f"the answer is not JSON (status {status}, content-type {ctype!r})",
                method=method,
                url=path,
                body=redact(body[:200].decode("utf-8", errors="replace"), self.secrets),
            ) from exc

    def _error(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
        *,
        method: str,
        path: str,
        idempotent: bool = False,
        starts_turn: bool = False,
    ) -> APIStatusError:
        err = error_from_response(
            status,
            body[:ERROR_BODY_LIMIT],
            headers,
            method=method,
            url=path,
            idempotent=idempotent,
            starts_turn=starts_turn,
            secrets=self.secrets,
        )
        if isinstance(err, NotFoundError) and err.error_type is None:
            base_path = urlsplit(self.base_url).path
            hint = (
                f"the base URL must end in {_BASE_PATH}"
                if not base_path.endswith(_BASE_PATH)
                else "check the base URL"
            )
            err.message = (
                f"{err.message} (not an API route: {hint}; "
                f"base_url={self.base_url!r}, e.g. https://api.qoder.com{_BASE_PATH})"
            )
        return err

    def _apply(
        self,
        options: RequestOptions,
        headers: dict[str, str],
        params: Sequence[tuple[str, str]] | None,
    ) -> tuple[Sequence[tuple[str, str]] | None, Timeout]:
        """Apply a call's options to ``headers`` (in place): its query and timeout back.

        An idempotency key among the extra headers is left out: :meth:`request`
        sends the one key of the request (:func:`idempotency_key_of`).
        """
        if options.extra_headers:
            headers.update(
                (k, v) for k, v in options.extra_headers.items() if k.lower() not in _KEY_HEADERS
            )
        if options.extra_query:
            extra = options.extra_query
            pairs = list(extra.items()) if isinstance(extra, Mapping) else list(extra)
            params = [*(params or ()), *pairs]
        return params, _as_timeout(options.timeout, self.timeout)

    # -- JSON requests

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Sequence[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
        starts_turn: bool = False,
        options: RequestOptions | None = None,
        retry: RetryPolicy | None = None,
        body: RequestBody | None = None,
    ) -> APIResponse:
        """One logical request with retries (see the module table).

        The body is ``json`` (serialised), or ``body`` (sent as it is).
        """
        call = await self._call(method, path)
        headers = call.headers
        timeout = self.timeout
        if options is not None:
            idempotency_key = idempotency_key_of(idempotency_key, options.extra_headers)
            params, timeout = self._apply(options, headers, params)
            if options.extra_body and body is None:
                if json is None:
                    json = {}
                if isinstance(json, Mapping):
                    json = {**json, **options.extra_body}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
            call.idempotent = True
        if retry is not None:
            call.policy = retry
        content: Content | None = None
        if json is not None:
            content = json_dumps(json)
            headers["Content-Type"] = "application/json"
        elif body is not None:
            content = body.content
            headers["Content-Type"] = body.content_type
            if body.length is not None:
                headers["Content-Length"] = str(body.length)
        url = self.base_url + path
        debug = logger.isEnabledFor(logging.DEBUG)
        clock = self.clock
        while True:
            started = clock()
            status: int | None = None
            resp_headers: Mapping[str, str] = _NO_HEADERS
            try:
                resp = await self.transport.request(
                    method, url, params=params, headers=headers, content=content, timeouts=timeout
                )
            except APIConnectionError as exc:
                error: BaseException = scrub(exc, self.secrets)
                logger.debug("%s %s failed: %s", method, path, error)
            else:
                status, resp_headers = resp.status, resp.headers
                request_id = resp_headers.get("x-request-id") or resp_headers.get("request-id")
                if debug:
                    logger.debug(
                        "%s %s -> %d [%s] %.1fms",
                        method,
                        path,
                        status,
                        request_id,
                        (clock() - started) * 1000,
                    )
                if status < 300:
                    body = self._parse(resp.body, status, resp_headers, method, path)
                    # tuple.__new__: a NamedTuple's own __new__ is a Python function
                    return _new_tuple(APIResponse, (status, resp_headers, body, request_id))
                error = self._error(
                    status,
                    resp.body,
                    resp_headers,
                    method=method,
                    path=path,
                    idempotent=call.idempotent,
                    starts_turn=starts_turn,
                )
            await call.failed(error, status, resp_headers)

    # -- streams

    def stream(
        self,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        last_event_id: str | None = None,
    ) -> _OpenStream:
        """Open an SSE stream; raises :class:`StreamRetry` for answers worth retrying.

        Use as ``async with http.stream(path) as resp``.
        """
        return _OpenStream(self, path, params, last_event_id)

    async def _check_stream(
        self, resp: StreamResponse, path: str, last_event_id: str | None, started: float
    ) -> None:
        status, resp_headers = resp.status, resp.headers
        request_id = resp_headers.get("x-request-id") or resp_headers.get("request-id")
        logger.debug(
            "GET %s -> %d [%s] %.1fms (Last-Event-ID=%s)",
            path,
            status,
            request_id,
            (self.clock() - started) * 1000,
            last_event_id,
        )
        ctype = resp_headers.get("content-type", "")
        if status >= 300:
            body = await self._read_limited(resp)
            err = self._error(status, body, resp_headers, method="GET", path=path)
            retryable = status in (408, 429) or status >= 500
            if retryable and resp_headers.get("x-should-retry") != "false":
                raise StreamRetry(err)
            raise err
        if "text/event-stream" not in ctype.split(";")[0].strip().lower():
            body = await self._read_limited(resp)
            raise scrub(
                StreamContentTypeError(
                    ctype,
                    status_code=status,
                    body=body,
                    request_id=request_id,
                    last_event_id=last_event_id,
                ),
                self.secrets,
            )

    async def _read_limited(self, resp: StreamResponse) -> bytes:
        """At most ``ERROR_BODY_LIMIT`` bytes of an error body (a gateway may send megabytes)."""
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in resp.chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= ERROR_BODY_LIMIT:
                    break
        except self.transport.errors:
            pass  # a truncated error body still names the status
        return b"".join(parts)[:ERROR_BODY_LIMIT]

    # -- streamed answers that are not SSE (downloads)

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        options: RequestOptions | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """A request whose 2xx answer's body is read as it arrives (a download).

        Error statuses raise the typed error; connection failures and answers
        worth retrying (see :class:`RetryPolicy`) are retried until the answer's
        headers arrive, never after.
        """
        call = await self._call(method, path)
        timeout = self.timeout
        if options is not None:
            params, timeout = self._apply(options, call.headers, params)
        url = self.base_url + path
        transport = self.transport
        while True:
            status: int | None = None
            resp_headers: Mapping[str, str] = _NO_HEADERS
            error: BaseException
            try:
                async with transport.open(
                    method, url, params=params, headers=call.headers, content=None, timeouts=timeout
                ) as resp:
                    status, resp_headers = resp.status, resp.headers
                    if status < 300:
                        yield resp
                        return
                    body = await self._read_limited(resp)
                error = self._error(status, body, resp_headers, method=method, path=path)
            except APIConnectionError as exc:
                if status is not None:
                    raise  # the body broke off: the caller had it, nothing to retry here
                error = scrub(exc, self.secrets)
            await call.failed(error, status, resp_headers)

    @contextlib.asynccontextmanager
    async def fetch(
        self, url: str, *, timeouts: Timeout | None = None
    ) -> AsyncIterator[StreamResponse]:
        """GET an absolute URL of another origin (a download link) with no credentials.

        Only ``User-Agent`` and ``Accept`` are sent: not the token, not the
        client's default headers, not the HTTP library's own defaults or
        cookies. Error statuses raise the typed error (the URL's query, which may
        hold a signature, is not quoted).
        """
        self._life.check()
        where = urlsplit(url).path
        headers = {"User-Agent": self._secret.headers["User-Agent"], "Accept": "*/*"}
        transport = self.transport
        async with transport.open(
            "GET",
            url,
            params=None,
            headers=headers,
            content=None,
            timeouts=timeouts or self.timeout,
            bare=True,
        ) as resp:
            if resp.status >= 300:
                body = await self._read_limited(resp)
                raise error_from_response(
                    resp.status, body, resp.headers, method="GET", url=where, secrets=self.secrets
                )
            yield resp


class _OpenStream:
    """:meth:`HTTP.stream`'s context manager.

    A class rather than a generator: an open stream keeps the transport's
    context and nothing else (a generator context manager keeps its frame, its
    arguments and itself: ~1 KiB per idle stream, with thousands open).
    """

    __slots__ = ("_args", "_http", "_opened")

    def __init__(
        self,
        http: HTTP,
        path: str,
        params: Sequence[tuple[str, str]] | None,
        last_event_id: str | None,
    ) -> None:
        self._http = http
        self._args: tuple[str, Sequence[tuple[str, str]] | None, str | None] | None = (
            path,
            params,
            last_event_id,
        )
        self._opened: contextlib.AbstractAsyncContextManager[StreamResponse] | None = None

    async def __aenter__(self) -> StreamResponse:
        """The transport's stream opened, its answer checked (see :meth:`HTTP.stream`)."""
        assert self._args is not None, "a stream context is entered once"
        (path, params, last_event_id), self._args = self._args, None
        http = self._http
        call = await http._call("GET", path)
        headers = call.headers
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-store"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        transport = http.transport
        while True:
            started = http.clock()
            opened = transport.stream(
                "GET",
                http.base_url + path,
                params=params,
                headers=headers,
                timeouts=http._stream_timeout,
            )
            resp = await opened.__aenter__()
            try:
                await http._check_stream(resp, path, last_event_id, started)
            except AuthenticationError as exc:
                await opened.__aexit__(type(exc), exc, exc.__traceback__)
                if not await call.reauthorize(exc):  # once per connection
                    raise
                continue
            except BaseException as exc:
                await opened.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            self._opened = opened
            return resp

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        opened, self._opened = self._opened, None
        if opened is None:
            return None
        return await opened.__aexit__(exc_type, exc, tb)
