"""Every exception qoder_async raises.

A caller never has to catch an httpx or aiohttp exception: transport failures
arrive as :class:`APIConnectionError`, HTTP error statuses as
:class:`APIStatusError` subclasses, bad stream input as :class:`StreamError`
subclasses. Messages and reprs never contain the access token; bodies are
quoted as short snippets, never whole.

::

    QoderError
    ├── ConfigurationError              no token, http:// to a remote host...
    ├── ClientClosedError               the client (or a stream/session) was used after close
    ├── APIError                        something went wrong talking to the API
    │   ├── APIStatusError              an HTTP error status (status_code, error_type...)
    │   │   ├── BadRequestError             400
    │   │   ├── AuthenticationError         401
    │   │   ├── PermissionDeniedError       403
    │   │   ├── NotFoundError               404
    │   │   ├── ConflictError               409 (classified by the table below)
    │   │   │   ├── SessionBusyError            a turn is running; the message was not stored
    │   │   │   ├── IdempotencyConflictError    Idempotency-Key reused with a different body
    │   │   │   ├── RequestInProgressError      the first request with this key still runs
    │   │   │   └── ToolResultsNotAwaitedError  a result for a tool use nobody waits for
    │   │   ├── RequestTooLargeError        413
    │   │   ├── UnprocessableEntityError    422
    │   │   ├── RateLimitError              429
    │   │   └── InternalServerError         5xx
    │   │       └── OverloadedError             529
    │   ├── APIConnectionError          the request did not get an answer (reset, refused, DNS...)
    │   │   └── APITimeoutError         ... because a timeout expired
    │   └── APIResponseValidationError  a 2xx answer whose body is not what the API documents
    ├── StreamError                     the event stream failed (carries last_event_id)
    │   ├── StreamDecodeError           malformed SSE, invalid UTF-8, invalid JSON, wrong types
    │   │   └── FrameTooLargeError      a line/frame larger than max_event_bytes
    │   ├── StreamContentTypeError      the stream answered with something that is not SSE
    │   ├── StreamStalledError          no progress for too long, repeatedly
    │   ├── ResumeExhaustedError        reconnecting gave up (the last failure is __cause__)
    │   ├── CursorStoreError            the cursor store failed (its error is __cause__)
    │   └── ListenerOverflowError       a listen() reader fell behind and was detached (cursor)
    ├── WrongEventLoopError             the client was used from another event loop
    ├── TurnFailedError                 a turn ended without finishing (terminated, deleted)
    ├── ActionRequiredError             a turn waits on tool results nobody here answers
    ├── UnknownCursorError              a catch_up() cursor that is no event of this session
    ├── LeaseLostError                  a fleet lease is not ours any more: stop delivering
    ├── CoordinatorUnavailableError     the fleet coordinator (Redis) did not answer; retry later
    └── WebhookVerificationError        a webhook request was refused (qoder_async.webhooks)
        ├── WebhookSecretError          the receiver's secret is malformed (a configuration bug)
        ├── WebhookHeaderError          a Webhook-* header is missing or sent twice, differently
        ├── WebhookSignatureError       no v1 signature matches: forged, altered or wrong secret
        ├── WebhookTimestampError       authentic, but the timestamp is not a number or too far off
        └── WebhookPayloadError         authentic, but the body is not JSON or not the envelope

409 answers are classified by a table keyed on what the server said
(:data:`CONFLICT_RULES`, first match wins), never by the request alone:

==========================  ========================================================
error                       when (first match wins)
==========================  ========================================================
RequestInProgressError      sent with an Idempotency-Key
                            and the code or message has
                            ``(request|idempoten).{0,40}in[ _-]?progress``
IdempotencyConflictError    sent with an Idempotency-Key
                            and the code or message has
                            ``reuse``
                            or ``different (request )?(body|payload|parameters)``
                            or ``key_mismatch``
ToolResultsNotAwaitedError  to ``POST /sessions/[^/]+/(events|turns/[^/]+/resolve)``
                            and the code or message has
                            ``not (awaiting|awaited|waiting|pending)``
                            or ``no pending``
                            or ``not_awaiting``
SessionBusyError            posting a user.message or user.define_outcome
                            to ``POST /sessions/[^/]+/events``
==========================  ========================================================
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import urlsplit

from qoder_async._core.rules import render_table

__all__ = [
    "API_ROOT",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "ActionRequiredError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "CoordinatorUnavailableError",
    "CursorStoreError",
    "FrameTooLargeError",
    "IdempotencyConflictError",
    "InternalServerError",
    "LeaseLostError",
    "ListenerOverflowError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "QoderError",
    "RateLimitError",
    "RequestInProgressError",
    "RequestTooLargeError",
    "ResumeExhaustedError",
    "SessionBusyError",
    "StreamContentTypeError",
    "StreamDecodeError",
    "StreamError",
    "StreamStalledError",
    "ToolResultsNotAwaitedError",
    "TurnFailedError",
    "UnknownCursorError",
    "UnprocessableEntityError",
    "WebhookHeaderError",
    "WebhookPayloadError",
    "WebhookSecretError",
    "WebhookSignatureError",
    "WebhookTimestampError",
    "WebhookVerificationError",
    "WrongEventLoopError",
    "conflict_class",
    "conflict_table",
    "error_from_response",
    "redact",
    "request_path",
    "snippet",
]

SNIPPET_LIMIT = 200


def snippet(data: bytes | str | None, limit: int = SNIPPET_LIMIT) -> str:
    """A short, printable quote of ``data`` for error messages (never the whole body)."""
    if not data:
        return ""
    size = len(data)
    head = data[: limit * 4]
    text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
    text = text.strip()
    if len(text) > limit or size > len(head):
        unit = "bytes" if isinstance(data, bytes) else "chars"
        return f"{text[:limit]}... ({size} {unit})"
    return text


class QoderError(Exception):
    """Base class of every exception raised by qoder_async."""


class ConfigurationError(QoderError, ValueError):
    """The client was configured in a way that cannot work or is unsafe."""


class ClientClosedError(QoderError, RuntimeError):
    """The client, stream or session was used after it was closed."""


#: The path of the API under its host (a base URL ends in it).
API_ROOT = "/api/v1/cloud"


def request_path(url: str) -> str:
    """How an error names a request: its API path, as the API reference writes it.

    ``https://host/api/v1/cloud/sessions/s1?x=1`` and ``/api/v1/cloud/sessions/s1``
    are both ``/sessions/s1``: the part after :data:`API_ROOT` when the path has
    it, else the whole path; never the scheme, host or query (a query may hold
    a signature).
    """
    path = urlsplit(url).path
    at = path.find(API_ROOT + "/")
    return path[at + len(API_ROOT) :] if at >= 0 else path


class APIError(QoderError):
    """Something went wrong talking to the Qoder API.

    ``method`` and ``url`` name the request (never its headers): ``url`` is the
    API path (``/sessions/sess_1/events``, see :func:`request_path`), in every
    error alike. ``body`` is the parsed JSON body when there was one, else the
    text (or ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = request_path(url) if url else url
        self.body = body

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{self.message}{where}"


class APIStatusError(APIError):
    """The API answered with an HTTP error status.

    Attributes: ``status_code``; ``error_type`` (the envelope's ``error.type``,
    e.g. ``"invalid_request_error"``, or ``None`` for a non-JSON body);
    ``code`` (``error.code`` when sent); ``message``; ``param``; ``request_id``
    (the envelope's top-level ``request_id``, else the ``x-request-id``/
    ``request-id`` header: the envelope names the request the server logged);
    ``body``; ``headers`` (the response headers);
    ``retry_after`` (seconds the server asked to wait, when it said so).
    """

    status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url, body=body)
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.headers: Mapping[str, str] = dict(headers or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        rid = f" [request_id={self.request_id}]" if self.request_id else ""
        text = super().__str__()
        status = str(self.status_code)
        after = text[len(status) : len(status) + 1]
        if not kind and text.startswith(status) and not after.isdigit():
            # a plain-text body that already leads with the status ("302: Found",
            # "404 page not found"): said once
            return f"{text}{rid}"
        return f"{status}{kind}: {text}{rid}"


class BadRequestError(APIStatusError):
    """400: the request was malformed (missing field, bad JSON, bad cursor...)."""

    status = 400


class AuthenticationError(APIStatusError):
    """401: the token is missing, malformed, expired or revoked."""

    status = 401


class PermissionDeniedError(APIStatusError):
    """403: the token may not touch this resource."""

    status = 403


class NotFoundError(APIStatusError):
    """404: unknown resource (or an unregistered route answering plain text)."""

    status = 404


class ConflictError(APIStatusError):
    """409: a state conflict. Never retried blindly.

    The two cases a sender cares about have their own subclasses:
    :class:`SessionBusyError` and :class:`IdempotencyConflictError`.
    """

    status = 409


class SessionBusyError(ConflictError):
    """409 on send: the session is still running a turn; nothing was stored.

    Wait for the turn to end (``session.send(..., on_busy="wait")``) or interrupt it.
    """


class IdempotencyConflictError(ConflictError):
    """409: the ``Idempotency-Key`` was already used with a different request body."""


class RequestInProgressError(ConflictError):
    """409: a request with this ``Idempotency-Key`` is still being processed.

    Retried (with the same key) within the retry deadline: the first attempt's
    answer is replayed once it finishes.
    """


class ToolResultsNotAwaitedError(ConflictError):
    """409: a tool result or confirmation for a tool use the session is not waiting for."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is larger than the API accepts."""

    status = 413


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but semantically invalid."""

    status = 422


class RateLimitError(APIStatusError):
    """429: throttled by the gateway; see ``retry_after``."""

    status = 429


class InternalServerError(APIStatusError):
    """5xx: the server failed (500 api_error, 501, 503 gateway protection...)."""


class OverloadedError(InternalServerError):
    """529: the service is overloaded; retried like a 503."""

    status = 529


class APIConnectionError(APIError):
    """The request got no usable answer: refused, reset, DNS failure, broken body."""

    def __init__(
        self,
        message: str = "Connection error.",
        *,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)


class APITimeoutError(APIConnectionError):
    """A timeout expired before the server answered."""

    def __init__(
        self,
        message: str = "Request timed out.",
        *,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)


class APIResponseValidationError(APIError):
    """A successful answer whose body is not what the API documents."""


class StreamError(QoderError):
    """The event stream failed. ``last_event_id`` is where it can be resumed from."""

    def __init__(self, message: str, *, last_event_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.last_event_id = last_event_id

    def __str__(self) -> str:
        cursor = f" (last_event_id={self.last_event_id})" if self.last_event_id else ""
        return f"{self.message}{cursor}"


class StreamDecodeError(StreamError):
    """A frame could not be decoded: ``reason`` says why, ``frame`` quotes a snippet."""

    def __init__(
        self,
        reason: str,
        *,
        frame: bytes | str | None = None,
        event_id: str | None = None,
        last_event_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.frame = snippet(frame)
        self.event_id = event_id
        quote = f": {self.frame!r}" if self.frame else ""
        ident = f" in event {event_id}" if event_id else ""
        super().__init__(f"{reason}{ident}{quote}", last_event_id=last_event_id)


class FrameTooLargeError(StreamDecodeError):
    """A line or frame exceeded ``max_event_bytes``; it was discarded, not buffered."""

    def __init__(self, limit: int, *, frame: bytes | None = None, last_event_id: str | None = None):
        self.limit = limit
        super().__init__(
            f"SSE frame larger than max_event_bytes={limit}",
            frame=frame,
            last_event_id=last_event_id,
        )


class StreamContentTypeError(StreamError):
    """The stream endpoint answered with a content type that is not ``text/event-stream``."""

    def __init__(
        self,
        content_type: str,
        *,
        status_code: int,
        body: bytes | None = None,
        request_id: str | None = None,
        last_event_id: str | None = None,
    ) -> None:
        self.content_type = content_type
        self.status_code = status_code
        self.body = snippet(body)
        self.request_id = request_id
        rid = f" [request_id={request_id}]" if request_id else ""
        quote = f": {self.body!r}" if self.body else ""
        super().__init__(
            f"expected text/event-stream, got {content_type or 'no content type'!r} "
            f"with status {status_code}{rid}{quote}",
            last_event_id=last_event_id,
        )


class StreamStalledError(StreamError):
    """No real event arrived for ``stall_timeout`` seconds, ``stalls`` times in a row.

    ``idle_seconds`` is how long the last stall lasted; ``heartbeats`` how many
    keep-alives arrived meanwhile (the socket was alive, the session was not).
    """

    def __init__(
        self,
        *,
        stalls: int,
        stall_timeout: float,
        idle_seconds: float,
        heartbeats: int,
        last_event_id: str | None = None,
    ) -> None:
        self.stalls = stalls
        self.stall_timeout = stall_timeout
        self.idle_seconds = idle_seconds
        self.heartbeats = heartbeats
        super().__init__(
            f"stream stalled {stalls} times in a row: no event for {idle_seconds:.1f}s "
            f"(stall_timeout={stall_timeout}s, {heartbeats} heartbeats meanwhile)",
            last_event_id=last_event_id,
        )


class ResumeExhaustedError(StreamError):
    """Reconnecting failed ``attempts`` times in a row; the last failure is ``__cause__``."""

    def __init__(self, *, attempts: int, elapsed: float, last_event_id: str | None) -> None:
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            f"gave up reconnecting after {attempts} attempts over {elapsed:.1f}s",
            last_event_id=last_event_id,
        )


class CursorStoreError(StreamError):
    """The stream's ``cursor_store`` failed to save or load; its exception is ``__cause__``.

    Nothing is lost: ``last_event_id`` is the last event handed out, and a new
    stream from it continues where this one stopped.
    """


class ListenerOverflowError(StreamError):
    """A ``listen()`` reader fell behind and was detached: the slow-consumer policy.

    Its queue stayed full for ``listener_timeout`` seconds, so the session's
    connection (its turns, its other listeners) would otherwise have waited for
    it. The reader first gets every event queued for it, then this error:
    ``cursor`` (a :class:`~qoder_async.Cursor`, also as ``last_event_id``) is the
    last of them, so ``client.sessions.events.stream(session_id,
    last_event_id=err.cursor)`` resumes without a gap.
    """

    def __init__(self, message: str, *, last_event_id: str | None, cursor: Any) -> None:
        super().__init__(message, last_event_id=last_event_id)
        self.cursor = cursor


class WrongEventLoopError(QoderError, RuntimeError):
    """The client was used from an event loop other than the one it first ran in.

    A ``QoderClient`` holds connections that belong to one event loop: create it
    inside the loop that uses it (one client per ``asyncio.run()``).
    """


class TurnFailedError(QoderError):
    """A turn ended without finishing: the session was terminated or deleted.

    ``turn_id``; ``reason`` (the ending event's type); ``event`` (that event);
    ``result`` (the :class:`TurnResult` folded so far, or ``None``).
    """

    def __init__(self, message: str, *, turn_id: str | None, reason: str, event: Any, result: Any):
        super().__init__(message)
        self.turn_id = turn_id
        self.reason = reason
        self.event = event
        self.result = result


class ActionRequiredError(QoderError):
    """A turn is paused until the client answers tool uses no handler here answers.

    Raised by ``turn.result(on_action="raise")``. ``pending`` are the tool calls
    to answer (``turn.submit_tool_results``: each a ``ToolCall``), ``turn_id`` the turn.
    """

    def __init__(self, message: str, *, turn_id: str | None, pending: tuple[Any, ...]):
        super().__init__(message)
        self.turn_id = turn_id
        self.pending = pending


class UnknownCursorError(QoderError, LookupError):
    """``catch_up(last_event_id=...)`` got a cursor that is not an event of this session.

    Another session's cursor, or an id that never existed: an empty answer
    would hand the same cursor back forever. ``session_id`` and ``cursor`` (the
    id) say which.
    """

    def __init__(self, message: str, *, session_id: str, cursor: str) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.cursor = cursor


class WebhookVerificationError(QoderError):
    """A webhook request was refused by :func:`qoder_async.webhooks.unwrap`.

    The subclass names the check that failed; the message says what was wrong
    without quoting the secret or any expected signature. ``webhook_id`` is the
    ``Webhook-ID`` header when there was one (safe to log). Answer a request that
    raised this with a 4xx, except :class:`WebhookSecretError`, which is your bug.
    """

    def __init__(self, message: str, *, webhook_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.webhook_id = webhook_id

    def __str__(self) -> str:
        # The id is whatever the request claimed: quoted short, never trusted whole.
        ident = f" (Webhook-ID {snippet(self.webhook_id, 80)!r})" if self.webhook_id else ""
        return f"{self.message}{ident}"


class WebhookSecretError(WebhookVerificationError):
    """The secret given to verify with is malformed: empty, or ``whsec_`` + bad base64."""


class WebhookHeaderError(WebhookVerificationError):
    """A required ``Webhook-*`` header is missing, empty, or repeated with different values."""


class WebhookSignatureError(WebhookVerificationError):
    """No ``v1`` signature in ``Webhook-Signature`` matches: forged, altered or wrong secret."""


class WebhookTimestampError(WebhookVerificationError):
    """``Webhook-Timestamp`` is not Unix seconds, or lies outside the tolerance (a replay?)."""


class WebhookPayloadError(WebhookVerificationError):
    """The signature is valid but the body is not JSON, or not the webhook envelope."""


class LeaseLostError(QoderError):
    """A fleet coordinator refused a lease operation: the lease is no longer ours.

    Raised when a renewal, commit, in-flight record, release or tool-ledger write
    names a fencing ``token`` that is stale (another worker claimed the session
    since) or whose lease was released or handed off. The worker must stop
    delivering ``session_id`` at once; its current owner redelivers whatever
    was in flight.
    """

    def __init__(self, session_id: str, token: int, message: str | None = None) -> None:
        self.session_id = session_id
        self.token = token
        super().__init__(message or f"lease on {session_id} with token {token} is lost")


class CoordinatorUnavailableError(QoderError):
    """The fleet coordinator could not be reached or failed (Redis down, timeout...).

    The operation may or may not have been applied. Every coordinator operation
    is safe to retry with the same arguments; workers stop delivering until the
    coordinator answers again. The underlying error is ``__cause__``.
    """


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    529: OverloadedError,
}

# For error envelopes that arrive without an HTTP status (an SSE `event: error` frame).
_STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "request_too_large": 413,
    "api_error": 500,
    "overloaded_error": 529,
    "feature_not_available": 501,
}


def status_for_error_type(error_type: str | None) -> int:
    """The HTTP status an error type implies (500 when unknown)."""
    return _STATUS_BY_TYPE.get(error_type or "", 500)


def error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    cls = _BY_STATUS.get(status_code)
    if cls is not None:
        return cls
    return InternalServerError if status_code >= 500 else APIStatusError


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0 and value == value:  # rejects NaN
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if value >= 0 and value == value else None


def _decode_body(content: bytes) -> object:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


class ConflictRule(NamedTuple):
    """One row of the 409 table: what the server said, and what the request was."""

    said: re.Pattern[str] | None  # searched in ``error.code`` and the message, lower-cased
    route: re.Pattern[str] | None  # matched against "METHOD /path"
    needs_key: bool  # the request carried an Idempotency-Key
    starts_turn: bool  # the request posted a user.message or user.define_outcome
    cls: type[ConflictError]


_SEND = re.compile(r"POST /sessions/[^/]+/events")
CONFLICT_RULES: tuple[ConflictRule, ...] = (
    ConflictRule(
        re.compile(r"(request|idempoten).{0,40}in[ _-]?progress"),
        None,
        True,
        False,
        RequestInProgressError,
    ),
    ConflictRule(
        re.compile(r"reuse|different (request )?(body|payload|parameters)|key_mismatch"),
        None,
        True,
        False,
        IdempotencyConflictError,
    ),
    ConflictRule(
        re.compile(r"not (awaiting|awaited|waiting|pending)|no pending|not_awaiting"),
        re.compile(r"POST /sessions/[^/]+/(events|turns/[^/]+/resolve)"),
        False,
        False,
        ToolResultsNotAwaitedError,
    ),
    ConflictRule(None, _SEND, False, True, SessionBusyError),
)
"""The 409 table (see the module docstring); the first matching row wins."""


def conflict_table() -> str:
    """:data:`CONFLICT_RULES` as the module docstring shows them."""
    rows = []
    for rule in CONFLICT_RULES:
        when = ["sent with an Idempotency-Key"] if rule.needs_key else []
        if rule.starts_turn:
            when.append("posting a user.message or user.define_outcome")
        if rule.route is not None:
            when.append(f"to ``{rule.route.pattern}``")
        if rule.said is not None:
            said = _alternatives(rule.said.pattern)
            when += ["and the code or message has", *(f"or ``{a}``" for a in said)]
            when[-len(said)] = when[-len(said)].removeprefix("or ")
        rows.append((rule.cls.__name__, "\n".join(when)))
    return render_table(("error", "when (first match wins)"), rows)


def _alternatives(pattern: str) -> list[str]:
    """A regular expression's top-level ``|`` alternatives."""
    out, depth, start = [], 0, 0
    for i, char in enumerate(pattern):
        depth += (char in "([") - (char in ")]")
        if char == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
    return [*out, pattern[start:]]


def conflict_class(
    *,
    code: str | None,
    message: str | None,
    method: str | None,
    path: str | None,
    idempotent: bool,
    starts_turn: bool,
) -> type[ConflictError]:
    """The exception class of a 409 answer, by :data:`CONFLICT_RULES`."""
    said = f"{code or ''} {message or ''}".lower()
    request = f"{(method or '').upper()} {path or ''}"
    for rule in CONFLICT_RULES:
        if rule.needs_key and not idempotent:
            continue
        if rule.starts_turn and not starts_turn:
            continue
        if rule.said is not None and not rule.said.search(said):
            continue
        if rule.route is not None and not rule.route.fullmatch(request):
            continue
        return rule.cls
    return ConflictError


_BEARER = re.compile(r"(?i)\b(bearer)(?:\s+|%20|\+)[A-Za-z0-9._~+/=-]+")
REDACTED = "<redacted>"
# Shorter "tokens" (test values like "t") would redact ordinary words; real PATs are long.
MIN_SECRET = 8
_V = TypeVar("_V")


def redact(value: _V, secrets: Sequence[str] = ()) -> _V:
    """``value`` with every ``secrets`` string and ``Bearer <credential>`` replaced.

    Secrets shorter than ``MIN_SECRET`` characters are only redacted after ``Bearer``.

    Walks strings, and the strings inside mappings, lists and tuples (a JSON
    body). Anything else is returned as is.
    """
    out: Any = value
    if isinstance(value, str):
        for secret in secrets:
            if len(secret) >= MIN_SECRET and secret in out:
                out = out.replace(secret, REDACTED)
        if "earer" in out or "EARER" in out:
            out = _BEARER.sub(rf"\1 {REDACTED}", out)
    elif isinstance(value, Mapping):
        out = {k: redact(v, secrets) for k, v in value.items()}
    elif isinstance(value, list | tuple):
        out = type(value)(redact(v, secrets) for v in value)
    return out  # type: ignore[no-any-return]


def scrub(exc: BaseException, secrets: Sequence[str] = ()) -> BaseException:
    """Redact the server-provided text an exception (and the errors it chains) carries.

    Returns ``exc`` itself, its attributes and ``args`` redacted in place.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and isinstance(current, QoderError):
        seen.add(id(current))
        for name, value in list(vars(current).items()):
            if not name.startswith("__"):
                setattr(current, name, redact(value, secrets))
        current.args = tuple(redact(a, secrets) for a in current.args)
        current = current.__cause__ or current.__context__
    return exc


def error_from_response(
    status_code: int,
    content: bytes,
    headers: Mapping[str, str],
    *,
    method: str | None = None,
    url: str | None = None,
    idempotent: bool = False,
    starts_turn: bool = False,
    secrets: Sequence[str] = (),
) -> APIStatusError:
    """Build the typed error for an HTTP error answer.

    Works for the JSON error envelope, plain-text bodies (``404 page not found``),
    HTML error pages and empty bodies alike. ``headers`` must be case-insensitive
    or lower-cased. A 409 is classified by :data:`CONFLICT_RULES` (``idempotent``:
    the request carried an ``Idempotency-Key``; ``starts_turn``: it posted a
    turn-starting event). Every server string is redacted of ``secrets``.
    """
    body = _decode_body(content)
    error_type = code = param = message = request_id = None
    if isinstance(body, dict):
        error_type, message, param, code = _error_fields(body.get("error"))
        if message is None:
            message = _str_or_none(body.get("message"))
        request_id = _str_or_none(body.get("request_id")) or None
    if request_id is None:
        request_id = headers.get("x-request-id") or headers.get("request-id")
    if message is None:
        text = snippet(content)
        message = text or f"HTTP {status_code} with an empty body"
    cls = error_class(status_code)
    if status_code == 409:
        cls = conflict_class(
            code=code,
            message=message,
            method=method,
            path=url,
            idempotent=idempotent,
            starts_turn=starts_turn,
        )
    return cls(
        redact(message, secrets),
        status_code=status_code,
        error_type=error_type,
        code=code,
        param=param,
        request_id=request_id,
        body=redact(body if isinstance(body, dict | list) else snippet(content), secrets),
        headers=redact(dict(headers), secrets),
        retry_after=parse_retry_after(headers),
        method=method,
        url=url,
    )


def error_from_envelope(body: Mapping[str, Any]) -> APIStatusError:
    """Build the typed error for an error envelope received inside an event stream."""
    error_type, message, _, _ = _error_fields(body.get("error", body))
    status = status_for_error_type(error_type)
    return error_class(status)(
        message or "the stream reported an error",
        status_code=status,
        error_type=error_type,
        request_id=_str_or_none(body.get("request_id")),
        body=dict(body),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _error_fields(err: object) -> tuple[str | None, str | None, str | None, str | None]:
    """``(type, message, param, code)`` of an envelope's ``error``: an object, or a message."""
    if isinstance(err, Mapping):
        return (
            _str_or_none(err.get("type")),
            _str_or_none(err.get("message")),
            _str_or_none(err.get("param")),
            _str_or_none(err.get("code")),
        )
    return None, err if isinstance(err, str) else None, None, None
