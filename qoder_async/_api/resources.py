"""SHELL: the resources, mirroring the HTTP API and the official SDK's names.

``client.sessions`` (with ``.events``, ``.threads`` (and ``.threads.events``)
and ``.resources``), ``client.agents`` (with ``.versions``),
``client.environments``, ``client.files`` and ``client.models``. Each method
builds one request for the request layer (``_shell/http.py``) and turns the answer
into typed models through the converter (``_core/convert.py``).

Every method takes the per-call options ``extra_headers``, ``extra_query``,
``extra_body`` and ``timeout``; every write also takes ``idempotency_key``
(the same key is sent on each retry, and makes a write retried on 5xx and
connection errors, not only on 429). A child resource's methods take the
parent's id first: ``threads.retrieve(session_id, thread_id)``; keyword calls
(``session_id=``, ``thread_id=``) read the same as the official SDK's. Every id
is checked as one path segment before any request.

``resource.with_raw_response.method(...)`` makes the same call and answers a
:class:`RawResponse` (status, headers, request id, ``await .parse()``), as the
official SDKs do; a list answers its first page.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack, cast, overload

from qoder_async._api.tools import Tool, definitions
from qoder_async._core.backoff import ReconnectPolicy, RetryPolicy
from qoder_async._core.convert import (
    ShapeError,
    converter,
    structure_agent,
    structure_deleted,
    structure_environment,
    structure_event,
    structure_file,
    structure_model,
    structure_session,
    structure_session_cancel,
    structure_session_resource,
    structure_thread,
)
from qoder_async._core.errors import (
    APIResponseValidationError,
    ConfigurationError,
    SessionBusyError,
)
from qoder_async._core.models import (
    Accepted,
    Agent,
    BaseEvent,
    Cursor,
    Deleted,
    Environment,
    Event,
    FileMetadata,
    ModelInfo,
    OutboundEvent,
    Session,
    SessionCancel,
    SessionResource,
    SessionThread,
    UserDefineOutcome,
    UserMessage,
    is_copy_of,
    new_idempotency_key,
)
from qoder_async._core.params import (
    AgentParams,
    AgentWithOverridesParams,
    BudgetLimitParam,
    SessionAgentUpdateParams,
    SessionResourceParams,
    SkillParams,
    ToolParams,
    URLMCPServerParams,
)
from qoder_async._core.sse import DEFAULT_MAX_EVENT_BYTES
from qoder_async._shell.eventstream import (
    DEFAULT_MAX_STALLS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    CursorStore,
    EventStream,
)
from qoder_async._shell.files import (
    DEFAULT_DOWNLOAD_READ_TIMEOUT,
    FileDownload,
    FileInput,
    Upload,
    download_link,
    fetch_link,
    prepare_upload,
)
from qoder_async._shell.http import HTTP, APIResponse, RequestOptions, idempotency_key_of, segment
from qoder_async._shell.pagination import AsyncPaginator, list_params
from qoder_async._shell.transport import SourceError, Timeout

__all__ = [
    "FIND_SENT_LIMIT",
    "AgentVersions",
    "Agents",
    "CallOptions",
    "Environments",
    "Files",
    "Models",
    "RawResponse",
    "RawResponses",
    "SessionEvents",
    "SessionResources",
    "SessionThreads",
    "Sessions",
    "ThreadEvents",
    "find_sent",
    "send_retrying_busy",
]

_T = TypeVar("_T")
_TURN_STARTERS = ("user.message", "user.define_outcome")
# Uploads may be large: unless the call says otherwise, an attempt may take this long.
UPLOAD_TIMEOUT = 600.0
_NO_RETRY = RetryPolicy(max_retries=0)


class CallOptions(TypedDict, total=False):
    """Per-call options every resource method accepts."""

    extra_headers: Mapping[str, str]
    extra_query: Mapping[str, str]
    extra_body: Mapping[str, Any]
    timeout: float | Timeout


def _options(options: CallOptions) -> RequestOptions | None:
    if not options:
        return None
    return RequestOptions(**options)


def _put(body: dict[str, Any], **values: Any) -> dict[str, Any]:
    """``body`` with every value that is not None added (mappings and tuples copied)."""
    for key, value in values.items():
        if value is not None:
            if isinstance(value, Mapping):
                body[key] = dict(value)
            elif isinstance(value, tuple):
                body[key] = list(value)
            else:
                body[key] = value
    return body


def _list_of(value: Iterable[Any] | None) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping):
        raise ConfigurationError(f"expected a list, got {type(value).__name__}")
    return [dict(v) if isinstance(v, Mapping) else v for v in value]


def _tools(tools: Sequence[ToolParams | Mapping[str, Any] | Tool] | None) -> list[Any] | None:
    """An agent's ``tools`` as sent: every :class:`Tool` given as its definition."""
    return None if tools is None else _list_of(definitions(tools))


# --------------------------------------------------------------------------- raw responses


class RawResponse(Generic[_T]):
    """The HTTP answer of a call made through ``with_raw_response``.

    ``status_code``, ``headers`` (case-insensitive), ``request_id`` and
    ``body`` (the parsed JSON) are there at once; ``await parse()`` gives what
    the plain call returns (and raises :class:`APIResponseValidationError` if
    the body is not what the API documents).
    """

    def __init__(self, answer: APIResponse, parse: Callable[[Any], _T]) -> None:
        self.status_code = answer.status
        self.headers: Mapping[str, str] = answer.headers
        self.request_id = answer.request_id
        self.body: Any = answer.body
        self._parse = parse

    def __repr__(self) -> str:
        return f"<RawResponse {self.status_code} request_id={self.request_id}>"

    async def parse(self) -> _T:
        """The typed result, as the call without ``with_raw_response`` returns it."""
        return self._parse(self.body)


class RawResponses:
    """``resource.with_raw_response``: the resource's methods, answering :class:`RawResponse`.

    ``await client.sessions.with_raw_response.retrieve(id)``; child resources
    too (``client.sessions.with_raw_response.events.send(...)``). A list gives
    the raw answer of its first page. Methods whose answer is not one JSON
    document (``events.stream``, ``files.download``) raise ``TypeError``: their
    objects carry the status and headers themselves.
    """

    def __init__(self, resource: _Resource) -> None:
        twin = copy.copy(resource)
        twin._raw = True
        self._resource = twin

    def __repr__(self) -> str:
        return f"<RawResponses of {type(self._resource).__name__}>"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._resource, name)
        if isinstance(attr, _Resource):
            return attr.with_raw_response
        if name.startswith("_") or not callable(attr):
            raise AttributeError(name)

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> RawResponse[Any]:
            out = attr(*args, **kwargs)
            if isinstance(out, AsyncPaginator):
                paginator: AsyncPaginator[Any] = out
                return RawResponse(await paginator.first_page(), paginator.parse_page)
            if inspect.isawaitable(out):
                out = await out
            if not isinstance(out, RawResponse):
                if hasattr(out, "aclose"):
                    await out.aclose()
                raise TypeError(
                    f"{name}() has no raw response: what it returns carries its own status "
                    "and headers"
                )
            return out

        return call


class _Resource:
    _raw = False
    _base = ""
    """The collection's path; each ``{}`` takes a parent's id (``"/vaults/{}/credentials"``)."""

    def __init__(self, http: HTTP) -> None:
        self._http = http

    def _path(self, *ids: str, action: str = "") -> str:
        """The parents' ids in ``_base``, then an item's id and ``action`` if given; every id
        checked as one path segment (:func:`segment`)."""
        parents = self._base.count("{}")
        path = self._base.format(*map(segment, ids[:parents]))
        path += "".join(f"/{segment(item)}" for item in ids[parents:])
        return f"{path}/{action}" if action else path

    @property
    def with_raw_response(self) -> RawResponses:
        """The same methods, answering :class:`RawResponse` (status, headers, ``parse()``)."""
        return RawResponses(self)

    def _answer(self, answer: APIResponse, item: Callable[[Any], _T], method: str, path: str) -> _T:
        def parse(body: Any) -> _T:
            try:
                return item(body)
            except ShapeError as exc:
                raise APIResponseValidationError(
                    f"unexpected answer: {exc}", method=method, url=path, body=body
                ) from exc

        if self._raw:
            return cast(_T, RawResponse(answer, parse))
        return parse(answer.body)

    async def _call(
        self,
        method: str,
        path: str,
        item: Callable[[Any], _T],
        options: CallOptions,
        idempotency_key: str | None = None,
        *,
        json: Any = None,
        params: list[tuple[str, str]] | None = None,
    ) -> _T:
        answer = await self._http.request(
            method,
            path,
            json=json,
            params=params,
            idempotency_key=idempotency_key,
            options=_options(options),
        )
        return self._answer(answer, item, method, path)

    async def _delete(
        self,
        path: str,
        kind: str,
        options: CallOptions,
        idempotency_key: str | None,
        params: list[tuple[str, str]] | None = None,
    ) -> Deleted:
        """``DELETE path``, answered by a :class:`Deleted` of type ``kind``."""
        deleted = structure_deleted(kind)
        return await self._call("DELETE", path, deleted, options, idempotency_key, params=params)

    def _list(
        self,
        path: str,
        params: list[tuple[str, str]],
        item: Callable[[Any], _T],
        options: CallOptions,
    ) -> AsyncPaginator[_T]:
        return AsyncPaginator(self._http, path, params, item, options=_options(options))

    async def _upload(
        self,
        path: str,
        upload: Upload,
        item: Callable[[Any], _T],
        idempotency_key: str | None,
        options: CallOptions,
    ) -> _T:
        """POST a multipart body; an attempt may take 600 s unless ``timeout`` says otherwise."""
        if "timeout" not in options:
            options["timeout"] = Timeout(total=UPLOAD_TIMEOUT, connect=self._http.timeout.connect)
        try:
            answer = await self._http.request(
                "POST",
                path,
                body=upload.body(),
                idempotency_key=idempotency_key,
                options=_options(options),
                retry=None if upload.replayable else _NO_RETRY,
            )
        except SourceError as exc:
            failure = exc.error
        else:
            return self._answer(answer, item, "POST", path)
        raise failure  # the source's own error, raised outside the handler: no chain added

    async def _download(
        self,
        path: str,
        to: str | os.PathLike[str] | None,
        read_timeout: float | None,
        options: CallOptions,
    ) -> FileDownload | Path:
        """The bytes at ``path`` as they arrive (a download link is followed, credential-free)."""
        http = self._http
        errors = http.transport.errors
        stack = contextlib.AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                http.open("GET", path, options=_options(options))
            )
            url = http.url(path)
            link, prefix, chunks = await download_link(
                response, errors=errors, url=url, read_timeout=read_timeout
            )
            if link is not None:
                await stack.aclose()
                stack = contextlib.AsyncExitStack()
                url, response = await fetch_link(http, stack, link, source=url)
                chunks = response.chunks.__aiter__()
            download = FileDownload(
                stack,
                response,
                prefix=prefix,
                chunks=chunks,
                errors=errors,
                url=url,
                read_timeout=read_timeout,
            )
        except BaseException:
            await stack.aclose()
            raise
        if to is None:
            return download
        await download.write_to_file(to)
        return Path(to)


# --------------------------------------------------------------------------- session events


def _event_json(ev: OutboundEvent | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(ev, Mapping):
        return ev
    if not isinstance(ev, BaseEvent):
        raise ConfigurationError(
            f"cannot send a {type(ev).__name__} as an event: give user.* event models "
            "(UserMessage(...)), JSON objects, or a list of them"
        )
    out: Mapping[str, Any] = converter.unstructure(ev)
    return out


def _events(value: Sequence[OutboundEvent | Mapping[str, Any]] | None) -> list[Any] | None:
    """``initial_events`` as sent (a session's or a deployment's)."""
    if value is None:
        return None
    if isinstance(value, str | Mapping):
        raise ConfigurationError("initial_events must be a list of events")
    return [_event_json(ev) for ev in value]


class SessionEvents(_Resource):
    """``client.sessions.events``: send, list and stream a session's events."""

    _base = "/sessions/{}/events"

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self._reconnect = reconnect

    async def send(
        self,
        session_id: str,
        events: str
        | OutboundEvent
        | Mapping[str, Any]
        | Sequence[OutboundEvent | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Accepted:
        """Post events (``POST /sessions/{id}/events``); returns the 202 handle.

        ``events`` is one event or a list: :class:`UserMessage` and the other
        ``user.*`` models, or raw JSON objects; a plain string is sent as one
        ``user.message`` with that text. Every send carries an
        ``Idempotency-Key`` (yours, or a fresh one reused across retries), so a
        retried send is stored once. A busy session raises
        :class:`SessionBusyError` (never retried). An answer that names no
        created event (``"data": []``) is an ``Accepted`` with no events: the
        events were stored; follow the session from your cursor.
        """
        items: Sequence[OutboundEvent | Mapping[str, Any]]
        if isinstance(events, str):
            items = [UserMessage(events)]
        elif isinstance(events, Mapping) or not isinstance(events, Sequence):
            items = [events]
        else:
            items = cast("Sequence[OutboundEvent | Mapping[str, Any]]", events)
        if not items:
            raise ConfigurationError("send needs at least one event")
        payload = [_event_json(ev) for ev in items]
        # The caller's key (argument or header, in any case) wins over a generated one.
        key = idempotency_key_of(idempotency_key, options.get("extra_headers"))
        key = key or new_idempotency_key()
        path = self._path(session_id)
        answer = await self._http.request(
            "POST",
            path,
            json={"events": payload},
            idempotency_key=key,
            starts_turn=any(ev.get("type") in _TURN_STARTERS for ev in payload),
            options=_options(options),
        )
        return self._answer(answer, functools.partial(_accepted, answer, key), "POST", path)

    def list(
        self,
        session_id: str,
        *,
        order: Literal["asc", "desc"] | None = None,
        limit: int | None = None,
        types: Sequence[str] | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Event]:
        """Iterate the session's stored events (history), fetching pages as needed."""
        params = list_params(
            order=order, limit=limit, after_id=after_id, before_id=before_id, types=types
        )
        return self._list(self._path(session_id), params, structure_event, options)

    def stream(
        self,
        session_id: str,
        *,
        last_event_id: Cursor | str | None = None,
        event_deltas: Iterable[str] = (),
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        reconnect: ReconnectPolicy | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        cursor_store: CursorStore | None = None,
    ) -> EventStream:
        """Follow the session's events (SSE), reconnecting and resuming by itself.

        ``last_event_id`` is an event id or a :class:`Cursor` (an id and its
        ``processed_at``, which also lets the stream drop anything a server
        replays from before it). Without one (or a cursor in ``cursor_store``)
        the server first replays the whole history. ``event_deltas``
        (``"agent.message"``, ``"agent.thinking"``) adds live previews
        (:class:`PreviewStart`, :class:`PreviewDelta`) to this connection;
        none by default (a reader asks for the previews it shows; the turn
        API's ``text_stream()`` asks for ``agent.message``). A session created
        with ``incremental_streaming_enabled`` sends its incremental events
        with no parameter. See :class:`EventStream`.
        """
        self._http.check_open()
        return EventStream(
            self._http,
            session_id,
            self._path(session_id, action="stream"),
            last_event_id=last_event_id,
            event_deltas=event_deltas,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
            read_timeout=read_timeout,
            reconnect=reconnect or self._reconnect,
            max_event_bytes=max_event_bytes,
            cursor_store=cursor_store,
        )


# --------------------------------------------------------------------------- a turn's send
# Shared by SessionHandle.send and Fleet.send: one busy rule, one lookup rule.

FIND_SENT_LIMIT = 100
"""Stored events searched, newest first (one page), for a send whose answer named none."""
_BUSY_BACKOFF_MAX = 5.0

BusyPause = Callable[[float, int], Awaitable[bool | None]]
"""``pause(seconds, attempt)`` waits up to ``seconds`` after a busy 409: True when the
session may be free now (post again), False when still busy (back off), None when
something moved (look again without backing off)."""


async def send_retrying_busy(
    post: Callable[[], Awaitable[_T]],
    *,
    on_busy: str,
    busy_timeout: float | None,
    clock: Callable[[], float],
    pause: BusyPause,
    interrupt: Callable[[], Awaitable[object]] | None = None,
) -> _T:
    """``post()`` again after each 409 busy, until it is accepted or ``busy_timeout`` passes.

    ``post`` sends under the caller's idempotency key, and every attempt is the
    same ``post``: a busy 409 stored nothing, so the same key on the next
    attempt stores the message once, and a later resend with that key is
    recognised as the same message (derived keys would store it twice).
    ``on_busy``: ``"raise"`` the first 409, ``"wait"``, or ``"interrupt"`` the
    running turn once, then wait. Backoff 0.1 s doubling to 5 s.
    """
    deadline = None if busy_timeout is None else clock() + busy_timeout
    delay, attempt, interrupted = 0.1, 0, False
    while True:
        try:
            return await post()
        except SessionBusyError as exc:
            if on_busy == "raise":
                raise
            busy, attempt = exc, attempt + 1
        if on_busy == "interrupt" and not interrupted and interrupt is not None:
            await interrupt()
            interrupted = True
        while True:
            remaining = None if deadline is None else deadline - clock()
            if remaining is not None and remaining <= 0:
                raise SessionBusyError(
                    "the session stayed busy past busy_timeout: if it reports idle, a turn is "
                    "probably paused waiting for tool results (requires_action) — answer it "
                    "(turn.submit_tool_results) or interrupt it (on_busy='interrupt')",
                    status_code=409,
                    error_type=busy.error_type,
                    request_id=busy.request_id,
                ) from busy
            free = await pause(delay if remaining is None else min(delay, remaining), attempt)
            if free is None:
                continue
            delay = min(delay * 2, _BUSY_BACKOFF_MAX)
            if free:
                break


async def find_sent(
    events: SessionEvents,
    session_id: str,
    sent: Sequence[OutboundEvent],
    *,
    stop_at: str | None = None,
) -> Event | None:
    """The stored copy of a send whose answer named no created event, or None.

    One bounded rule for every caller: the newest :data:`FIND_SENT_LIMIT`
    (100) events of the session, newest first, in one request, are searched
    for a copy of the send's ``user.message``/``user.define_outcome``; the
    search stops at ``stop_at`` (an event the caller saw before sending, so
    older than the message).
    """
    message = next((e for e in sent if isinstance(e, UserMessage | UserDefineOutcome)), None)
    if message is None:
        return None
    listing = events.list(session_id, order="desc", limit=FIND_SENT_LIMIT)
    for ev in listing.parse_page((await listing.first_page()).body):
        if stop_at is not None and ev.id == stop_at:
            return None
        if is_copy_of(ev, message):
            return ev
    return None


def _accepted(answer: APIResponse, key: str, body: Any) -> Accepted:
    """A send's answer; a ShapeError is an :class:`APIResponseValidationError` (``_answer``)."""
    data = body.get("data") if isinstance(body, Mapping) else body
    if not isinstance(data, list):
        raise ShapeError("data", "the list of the created events", data)
    created = tuple(structure_event(item) for item in data)
    return Accepted(events=created, request_id=answer.request_id, idempotency_key=key)


# --------------------------------------------------------------------------- threads


class ThreadEvents(_Resource):
    """``client.sessions.threads.events``: a sub-agent thread's events (history and SSE)."""

    _base = "/sessions/{}/threads/{}"

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self._reconnect = reconnect

    def list(
        self,
        session_id: str,
        thread_id: str,
        *,
        limit: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Event]:
        """Iterate the thread's stored events, oldest first, fetching pages as needed."""
        path = self._path(session_id, thread_id, action="events")
        params = list_params(limit=limit, after_id=after_id, before_id=before_id)
        return self._list(path, params, structure_event, options)

    def stream(
        self,
        session_id: str,
        thread_id: str,
        *,
        last_event_id: Cursor | str | None = None,
        event_deltas: Iterable[str] = (),
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_stalls: int = DEFAULT_MAX_STALLS,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        reconnect: ReconnectPolicy | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        cursor_store: CursorStore | None = None,
    ) -> EventStream:
        """Follow one thread's events (``GET .../threads/{tid}/stream``), resuming by itself.

        The same :class:`EventStream` as a session's, on the thread's path (it is
        ``/stream``, not ``/events/stream``): only events of the thread come.
        The cursor travels in the ``Last-Event-ID`` header; newer servers ignore
        ``event_deltas`` here. A ``cursor_store`` keeps this stream's cursor
        under the thread's id (``stream.session_id`` is the thread's id too),
        apart from the session's own.
        """
        self._http.check_open()
        return EventStream(
            self._http,
            thread_id,
            self._path(session_id, thread_id, action="stream"),
            last_event_id=last_event_id,
            event_deltas=event_deltas,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
            read_timeout=read_timeout,
            reconnect=reconnect or self._reconnect,
            max_event_bytes=max_event_bytes,
            cursor_store=cursor_store,
        )


class SessionThreads(_Resource):
    """``client.sessions.threads``: the sub-agent threads of a multi-agent session."""

    _base = "/sessions/{}/threads"

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self.events = ThreadEvents(http, reconnect)

    def list(
        self, session_id: str, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[SessionThread]:
        """Iterate the session's threads, oldest first."""
        return self._list(
            self._path(session_id), list_params(limit=limit), structure_thread, options
        )

    async def retrieve(
        self, session_id: str, thread_id: str, **options: Unpack[CallOptions]
    ) -> SessionThread:
        """Fetch a thread (its status, stats and usage)."""
        return await self._call("GET", self._path(session_id, thread_id), structure_thread, options)

    async def archive(
        self,
        session_id: str,
        thread_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> SessionThread:
        """Archive a thread."""
        path = self._path(session_id, thread_id, action="archive")
        return await self._call("POST", path, structure_thread, options, idempotency_key)


# --------------------------------------------------------------------------- session resources


class SessionResources(_Resource):
    """``client.sessions.resources``: files, repositories and memory stores mounted in a session."""

    _base = "/sessions/{}/resources"

    def list(
        self, session_id: str, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[SessionResource]:
        """Iterate the session's resources, oldest first."""
        params = list_params(limit=limit)
        return self._list(self._path(session_id), params, structure_session_resource, options)

    async def add(
        self,
        session_id: str,
        resource: SessionResourceParams | Mapping[str, Any] | None = None,
        *,
        type: str | None = None,
        file_id: str | None = None,
        mount_path: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> SessionResource:
        """Mount a resource: a whole ``resource`` object, or the official SDK's keywords.

        ``add(session_id, {"type": "github_repository", "url": ...})``, or
        ``add(session_id, type="file", file_id=..., mount_path="/data/x.csv")``.
        """
        body = _put(dict(resource or {}), type=type, file_id=file_id, mount_path=mount_path)
        body.setdefault("type", "file")
        path = self._path(session_id)
        return await self._call(
            "POST", path, structure_session_resource, options, idempotency_key, json=body
        )

    async def retrieve(
        self, session_id: str, resource_id: str, **options: Unpack[CallOptions]
    ) -> SessionResource:
        """Fetch one resource of the session."""
        path = self._path(session_id, resource_id)
        return await self._call("GET", path, structure_session_resource, options)

    async def update(
        self,
        session_id: str,
        resource_id: str,
        *,
        authorization_token: str | None = None,
        password: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> SessionResource:
        """Rotate a repository's credential (``authorization_token``, or ``password``)."""
        body = _put({}, authorization_token=authorization_token, password=password)
        path = self._path(session_id, resource_id)
        return await self._call(
            "POST", path, structure_session_resource, options, idempotency_key, json=body
        )

    async def delete(
        self,
        session_id: str,
        resource_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Unmount a resource."""
        path = self._path(session_id, resource_id)
        return await self._delete(path, "session_resource_deleted", options, idempotency_key)


# --------------------------------------------------------------------------- sessions


class Sessions(_Resource):
    """``client.sessions``: create, retrieve, update, list, cancel, archive, delete.

    Children: ``events``, ``threads`` (sub-agents), ``resources`` (mounts).
    """

    _base = "/sessions"

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self.events = SessionEvents(http, reconnect)
        self.threads = SessionThreads(http, reconnect)
        self.resources = SessionResources(http)

    async def create(
        self,
        *,
        agent: str | AgentParams | AgentWithOverridesParams | Mapping[str, Any],
        environment_id: str,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        resources: Sequence[SessionResourceParams | Mapping[str, Any]] | None = None,
        vault_ids: Sequence[str] | None = None,
        memory_store_ids: Sequence[str] | None = None,
        environment_variables: Mapping[str, str] | None = None,
        budget: BudgetLimitParam | Mapping[str, Any] | None = None,
        incremental_streaming_enabled: bool | None = None,
        initial_events: Sequence[OutboundEvent | Mapping[str, Any]] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Create a session.

        ``agent`` is an agent id (its latest version), ``{"type": "agent", "id":
        ..., "version": 2}``, or ``{"type": "agent_with_overrides", "id": ...,
        "system": ..., "model": ..., "tools": [...], ...}``. ``resources`` are
        mounted at start: repositories (``GitHubRepositoryResourceParams``),
        uploaded files (``FileResourceParams``), memory stores
        (``MemoryStoreResourceParams``); ``budget`` caps the spend
        (``{"type": "limit", "max_credit_cost": "5.00"}``).
        """
        body = _put(
            {
                "agent": dict(agent) if isinstance(agent, Mapping) else agent,
                "environment_id": environment_id,
            },
            title=title,
            metadata=metadata,
            resources=_list_of(resources),
            vault_ids=_list_of(vault_ids),
            memory_store_ids=_list_of(memory_store_ids),
            environment_variables=environment_variables,
            budget=budget,
            incremental_streaming_enabled=incremental_streaming_enabled,
            initial_events=_events(initial_events),
        )
        return await self._call(
            "POST", self._path(), structure_session, options, idempotency_key, json=body
        )

    async def retrieve(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        """Fetch a session."""
        return await self._call("GET", self._path(session_id), structure_session, options)

    async def update(
        self,
        session_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        agent: SessionAgentUpdateParams | Mapping[str, Any] | None = None,
        environment_variables: Mapping[str, str] | None = None,
        budget: BudgetLimitParam | Mapping[str, Any] | None = None,
        vault_ids: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Update a session: title, metadata, its agent's settings, variables, budget, vaults.

        Fields left ``None`` are not sent (unchanged); ``extra_body`` sends others.
        """
        body = _put(
            {},
            title=title,
            metadata=metadata,
            agent=agent,
            environment_variables=environment_variables,
            budget=budget,
            vault_ids=_list_of(vault_ids),
        )
        path = self._path(session_id)
        return await self._call(
            "POST", path, structure_session, options, idempotency_key, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
        include_archived: bool | None = None,
        agent_id: str | None = None,
        agent_version: int | None = None,
        memory_store_id: str | None = None,
        statuses: Sequence[str] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Session]:
        """Iterate sessions, fetching pages as needed."""
        params = list_params(
            limit=limit,
            order=order,
            include_archived=include_archived,
            agent_id=agent_id,
            agent_version=agent_version,
            memory_store_id=memory_store_id,
            statuses=statuses,
        )
        return self._list(self._path(), params, structure_session, options)

    async def cancel(
        self,
        session_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> SessionCancel:
        """Cancel the running turn, if any (a no-op on an idle session).

        ``POST /sessions/{id}/cancel`` answers only the id and ``status``
        (``"canceling"``), not the whole session: :class:`SessionCancel`.
        """
        path = self._path(session_id, action="cancel")
        return await self._call("POST", path, structure_session_cancel, options, idempotency_key)

    async def archive(
        self,
        session_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Archive a session: it keeps its history and accepts no new events."""
        path = self._path(session_id, action="archive")
        return await self._call("POST", path, structure_session, options, idempotency_key)

    async def delete(
        self,
        session_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a session (where the server supports it; otherwise archive it)."""
        return await self._delete(
            self._path(session_id), "session_deleted", options, idempotency_key
        )


# --------------------------------------------------------------------------- agents


class AgentVersions(_Resource):
    """``client.agents.versions``: every version of an agent."""

    _base = "/agents/{}/versions"

    def list(
        self, agent_id: str, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[Agent]:
        """Iterate the agent's versions, newest first."""
        return self._list(self._path(agent_id), list_params(limit=limit), structure_agent, options)


class Agents(_Resource):
    """``client.agents``: create, retrieve, update, list, archive; ``versions``."""

    _base = "/agents"

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.versions = AgentVersions(http)

    async def create(
        self,
        *,
        name: str,
        model: str | Mapping[str, Any],
        system: str | None = None,
        description: str | None = None,
        tools: Sequence[ToolParams | Mapping[str, Any] | Tool] | None = None,
        mcp_servers: Sequence[URLMCPServerParams | Mapping[str, Any]] | None = None,
        skills: Sequence[SkillParams | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        multiagent: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Agent:
        """Create an agent (``model``: ``"auto"``, ``"ultimate"``... or ``{"id": ...}``).

        ``tools``: the built-in toolset, custom (client-side) tools (definitions,
        or :func:`tool` functions) and MCP toolsets; ``mcp_servers``: the
        servers those toolsets name; ``skills``.
        """
        body = _put(
            {"name": name, "model": model},
            system=system,
            description=description,
            metadata=metadata,
            tools=_tools(tools),
            mcp_servers=_list_of(mcp_servers),
            skills=_list_of(skills),
            multiagent=multiagent,
        )
        return await self._call(
            "POST", self._path(), structure_agent, options, idempotency_key, json=body
        )

    async def retrieve(
        self, agent_id: str, *, version: int | None = None, **options: Unpack[CallOptions]
    ) -> Agent:
        """Fetch an agent (its latest version unless ``version`` is given)."""
        params = list_params(version=version)
        return await self._call(
            "GET", self._path(agent_id), structure_agent, options, params=params
        )

    async def update(
        self,
        agent_id: str,
        *,
        version: int | None = None,
        name: str | None = None,
        model: str | Mapping[str, Any] | None = None,
        system: str | None = None,
        description: str | None = None,
        tools: Sequence[ToolParams | Mapping[str, Any] | Tool] | None = None,
        mcp_servers: Sequence[URLMCPServerParams | Mapping[str, Any]] | None = None,
        skills: Sequence[SkillParams | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        multiagent: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Agent:
        """Update an agent (a new version); pass the current ``version`` to refuse a race.

        With ``version`` the server answers 409 (:class:`ConflictError`) when the
        agent changed since you read it. Fields left ``None`` are not sent.
        """
        body = _put(
            {},
            version=version,
            name=name,
            model=model,
            system=system,
            description=description,
            metadata=metadata,
            multiagent=multiagent,
            tools=_tools(tools),
            mcp_servers=_list_of(mcp_servers),
            skills=_list_of(skills),
        )
        path = self._path(agent_id)
        return await self._call("POST", path, structure_agent, options, idempotency_key, json=body)

    def list(
        self,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Agent]:
        """Iterate agents, fetching pages as needed."""
        params = list_params(limit=limit, include_archived=include_archived)
        return self._list(self._path(), params, structure_agent, options)

    async def archive(
        self,
        agent_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Agent:
        """Archive an agent."""
        path = self._path(agent_id, action="archive")
        return await self._call("POST", path, structure_agent, options, idempotency_key)


# --------------------------------------------------------------------------- environments


class Environments(_Resource):
    """``client.environments``: create, retrieve, update, list, archive, delete."""

    _base = "/environments"

    async def create(
        self,
        *,
        name: str,
        config: Mapping[str, Any] | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Environment:
        """Create an environment (``config`` defaults to ``{"type": "cloud"}``)."""
        body = _put(
            {"name": name, "config": dict(config or {"type": "cloud"})},
            description=description,
            metadata=metadata,
        )
        return await self._call(
            "POST", self._path(), structure_environment, options, idempotency_key, json=body
        )

    async def retrieve(self, environment_id: str, **options: Unpack[CallOptions]) -> Environment:
        """Fetch an environment."""
        return await self._call("GET", self._path(environment_id), structure_environment, options)

    async def update(
        self,
        environment_id: str,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Environment:
        """Update an environment's name, description, config or metadata."""
        body = _put({}, name=name, config=config, description=description, metadata=metadata)
        path = self._path(environment_id)
        return await self._call(
            "POST", path, structure_environment, options, idempotency_key, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Environment]:
        """Iterate environments, fetching pages as needed."""
        params = list_params(limit=limit, include_archived=include_archived)
        return self._list(self._path(), params, structure_environment, options)

    async def archive(
        self,
        environment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Environment:
        """Archive an environment."""
        path = self._path(environment_id, action="archive")
        return await self._call("POST", path, structure_environment, options, idempotency_key)

    async def delete(
        self,
        environment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete an environment."""
        path = self._path(environment_id)
        return await self._delete(path, "environment_deleted", options, idempotency_key)


# --------------------------------------------------------------------------- files


class Files(_Resource):
    """``client.files``: upload, retrieve_metadata, list, download, delete.

    See :mod:`qoder_async._shell.files` for what uploads take and downloads handle.
    """

    _base = "/files"

    async def upload(
        self,
        file: FileInput,
        *,
        filename: str | None = None,
        purpose: str | None = None,
        mime_type: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires_in_seconds: int | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> FileMetadata:
        """Upload a file, streamed from where it is (``POST /files``, multipart).

        ``file`` is a path, bytes, a binary file object, an async iterable of
        bytes, or ``(filename, content[, mime_type])``. ``filename`` and
        ``mime_type`` default to the path's or file object's name and a guess
        from it; ``name`` (the official SDK's) is sent as a form field and
        renames the stored file. An attempt may take ``timeout`` seconds
        (600 s unless given). A body that cannot be read twice (a pipe, an
        async iterable) is never retried.
        """
        extra = dict(options.pop("extra_body", {}))
        fields: dict[str, Any] = {
            "purpose": purpose,
            "name": name,
            "metadata": metadata,
            "expires_in_seconds": expires_in_seconds,
            **extra,
        }
        upload = await prepare_upload(file, filename=filename, mime_type=mime_type, fields=fields)
        return await self._upload(self._path(), upload, structure_file, idempotency_key, options)

    async def retrieve_metadata(self, file_id: str, **options: Unpack[CallOptions]) -> FileMetadata:
        """Fetch a file's metadata (the official SDK's name: the content is :meth:`download`)."""
        return await self._call("GET", self._path(file_id), structure_file, options)

    def list(
        self,
        *,
        limit: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        scope_id: str | None = None,
        ids: Sequence[str] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[FileMetadata]:
        """Iterate files, newest first (``ids``: only these; ``scope_id``: of one scope)."""
        params = list_params(
            limit=limit, after_id=after_id, before_id=before_id, scope_id=scope_id, ids=ids
        )
        return self._list(self._path(), params, structure_file, options)

    @overload
    async def download(
        self,
        file_id: str,
        *,
        to: None = None,
        read_timeout: float | None = ...,
        **options: Unpack[CallOptions],
    ) -> FileDownload: ...

    @overload
    async def download(
        self,
        file_id: str,
        *,
        to: str | os.PathLike[str],
        read_timeout: float | None = ...,
        **options: Unpack[CallOptions],
    ) -> Path: ...

    async def download(
        self,
        file_id: str,
        *,
        to: str | os.PathLike[str] | None = None,
        read_timeout: float | None = DEFAULT_DOWNLOAD_READ_TIMEOUT,
        **options: Unpack[CallOptions],
    ) -> FileDownload | Path:
        """A file's bytes (``GET /files/{id}/content``), as they arrive.

        With ``to=path`` the file is written there (returns the path); else a
        :class:`FileDownload` to ``async for`` over (or ``read()``,
        ``write_to_file()``; ``async with`` it if you may stop early). When the
        API answers with a download link, the link is fetched without any
        credentials. ``read_timeout``: seconds without a byte before
        :class:`APITimeoutError`.
        """
        path = self._path(file_id, action="content")
        return await self._download(path, to, read_timeout, options)

    async def delete(
        self,
        file_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a file (later uses of its id are 404s)."""
        return await self._delete(self._path(file_id), "file_deleted", options, idempotency_key)


# --------------------------------------------------------------------------- models


class Models(_Resource):
    """``client.models``: the models an agent can use."""

    _base = "/models"

    def list(
        self, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[ModelInfo]:
        """Iterate the models (``is_enabled`` says which your account may use)."""
        return self._list(self._path(), list_params(limit=limit), structure_model, options)
