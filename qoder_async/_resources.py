"""SHELL: the resources, mirroring the HTTP API and the official SDK's names.

``client.sessions`` (with ``.events``), ``client.agents``, ``client.environments``.
Each method builds one request for the request layer (``_http.py``) and turns
the answer into typed models through the converter (``_convert.py``). Every
method takes the per-call options ``extra_headers``, ``extra_query``,
``extra_body`` and ``timeout``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from ._backoff import ReconnectPolicy
from ._convert import (
    ShapeError,
    converter,
    structure_agent,
    structure_deleted_session,
    structure_environment,
    structure_event,
    structure_session,
)
from ._errors import APIResponseValidationError, ConfigurationError
from ._eventstream import (
    DEFAULT_MAX_STALLS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    CursorStore,
    EventStream,
)
from ._http import HTTP, APIResponse, RequestOptions, segment
from ._models import (
    Accepted,
    Agent,
    Cursor,
    DeletedSession,
    Environment,
    Event,
    OutboundEvent,
    Session,
)
from ._pagination import AsyncPaginator, list_params
from ._stream import DEFAULT_MAX_EVENT_BYTES
from ._tools import Tool, definitions
from ._transport import Timeout

__all__ = [
    "Agents",
    "CallOptions",
    "Environments",
    "SessionEvents",
    "Sessions",
]

_T = TypeVar("_T")
_TURN_STARTERS = ("user.message", "user.define_outcome")


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


def _put(body: dict[str, Any], **values: Any) -> None:
    for key, value in values.items():
        if value is not None:
            body[key] = dict(value) if isinstance(value, Mapping) else value


class _Resource:
    def __init__(self, http: HTTP) -> None:
        self._http = http

    async def _call(
        self,
        method: str,
        path: str,
        item: Callable[[Any], _T],
        options: CallOptions,
        *,
        json: Any = None,
        params: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> _T:
        answer = await self._http.request(
            method,
            path,
            json=json,
            params=params,
            idempotency_key=idempotency_key,
            options=_options(options),
        )
        try:
            return item(answer.body)
        except ShapeError as exc:
            raise APIResponseValidationError(
                f"unexpected answer: {exc}", method=method, url=path, body=answer.body
            ) from exc


def _event_json(ev: OutboundEvent | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(ev, Mapping):
        return ev
    out: Mapping[str, Any] = converter.unstructure(ev)
    return out


def _starts_turn(payload: Sequence[Mapping[str, Any]]) -> bool:
    return any(ev.get("type") in _TURN_STARTERS for ev in payload)


class SessionEvents(_Resource):
    """``client.sessions.events``: send, list and stream a session's events."""

    async def send(
        self,
        session_id: str,
        events: OutboundEvent | Mapping[str, Any] | Sequence[OutboundEvent | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Accepted:
        """Post events (``POST /sessions/{id}/events``); returns the 202 handle.

        ``events`` is one event or a list: :class:`UserMessage` and the other
        ``user.*`` models, or raw JSON objects. Every send carries an
        ``Idempotency-Key`` (yours, or a fresh one reused across retries), so a
        retried send is stored once. A busy session raises
        :class:`SessionBusyError` (never retried). An answer that names no
        created event (``"data": []``) is an ``Accepted`` with no events: the
        events were stored; follow the session from your cursor.
        """
        if isinstance(events, Mapping) or not isinstance(events, Sequence):
            events = [events]
        if not events:
            raise ConfigurationError("send needs at least one event")
        payload = [_event_json(ev) for ev in events]
        key = idempotency_key or uuid.uuid4().hex
        path = f"/sessions/{segment(session_id)}/events"
        answer = await self._http.request(
            "POST",
            path,
            json={"events": payload},
            idempotency_key=key,
            starts_turn=_starts_turn(payload),
            options=_options(options),
        )
        return _accepted(answer, key, path)

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
        return AsyncPaginator(
            self._http,
            f"/sessions/{segment(session_id)}/events",
            params,
            structure_event,
            options=_options(options),
        )

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
        (:class:`EventStart`, :class:`EventDelta`) to this connection. See
        :class:`EventStream`.
        """
        self._http.check_open()
        return EventStream(
            self._http,
            session_id,
            f"/sessions/{segment(session_id)}/events/stream",
            last_event_id=last_event_id,
            event_deltas=event_deltas,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
            read_timeout=read_timeout,
            reconnect=reconnect or self._reconnect,
            max_event_bytes=max_event_bytes,
            cursor_store=cursor_store,
        )

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self._reconnect = reconnect


def _accepted(answer: APIResponse, key: str, path: str) -> Accepted:
    body = answer.body
    data = body.get("data") if isinstance(body, Mapping) else body
    if not isinstance(data, list):
        raise APIResponseValidationError(
            "a send answer must carry the created events in 'data'",
            method="POST",
            url=path,
            body=body,
        )
    try:
        created = tuple(structure_event(item) for item in data)
    except ShapeError as exc:
        raise APIResponseValidationError(
            f"unexpected event in a send answer: {exc}", method="POST", url=path, body=body
        ) from exc
    return Accepted(events=created, request_id=answer.request_id, idempotency_key=key)


class Sessions(_Resource):
    """``client.sessions``: create, retrieve, update, list, cancel, archive, delete."""

    def __init__(self, http: HTTP, reconnect: ReconnectPolicy) -> None:
        super().__init__(http)
        self.events = SessionEvents(http, reconnect)

    async def create(
        self,
        *,
        agent: str | Mapping[str, Any],
        environment_id: str,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        incremental_streaming_enabled: bool | None = None,
        initial_events: Sequence[OutboundEvent | Mapping[str, Any]] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Create a session; ``agent`` is an agent id or ``{"type": "agent", "id": ...}``."""
        body: dict[str, Any] = {"agent": agent, "environment_id": environment_id}
        _put(body, title=title, metadata=metadata)
        _put(body, incremental_streaming_enabled=incremental_streaming_enabled)
        if initial_events is not None:
            body["initial_events"] = [_event_json(e) for e in initial_events]
        return await self._call(
            "POST",
            "/sessions",
            structure_session,
            options,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def retrieve(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        """Fetch a session."""
        return await self._call(
            "GET", f"/sessions/{segment(session_id)}", structure_session, options
        )

    async def update(
        self,
        session_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Update a session's title, metadata or other fields (``extra_body``)."""
        body: dict[str, Any] = {}
        _put(body, title=title, metadata=metadata)
        return await self._call(
            "POST", f"/sessions/{segment(session_id)}", structure_session, options, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
        include_archived: bool | None = None,
        agent_id: str | None = None,
        statuses: Sequence[str] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Session]:
        """Iterate sessions, fetching pages as needed."""
        params = list_params(
            limit=limit,
            order=order,
            include_archived=include_archived,
            agent_id=agent_id,
            statuses=statuses,
        )
        return AsyncPaginator(
            self._http, "/sessions", params, structure_session, options=_options(options)
        )

    async def cancel(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        """Cancel the running turn, if any (a no-op on an idle session)."""
        return await self._call(
            "POST", f"/sessions/{segment(session_id)}/cancel", structure_session, options
        )

    async def archive(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        """Archive a session: it keeps its history and accepts no new events."""
        return await self._call(
            "POST", f"/sessions/{segment(session_id)}/archive", structure_session, options
        )

    async def delete(self, session_id: str, **options: Unpack[CallOptions]) -> DeletedSession:
        """Delete a session (where the server supports it; otherwise archive it)."""
        return await self._call(
            "DELETE", f"/sessions/{segment(session_id)}", structure_deleted_session, options
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
        tools: Sequence[Mapping[str, Any] | Tool] | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Agent:
        """Create an agent (``model``: ``"auto"``, ``"ultimate"``... or ``{"id": ...}``).

        ``tools`` are tool definitions (toolsets, MCP, custom) or :func:`tool`
        functions, declared by their definition.
        """
        body: dict[str, Any] = {"name": name, "model": model}
        _put(body, system=system, description=description, metadata=metadata)
        if tools is not None:
            body["tools"] = definitions(tools)
        return await self._call(
            "POST", "/agents", structure_agent, options, json=body, idempotency_key=idempotency_key
        )

    async def retrieve(
        self, agent_id: str, *, version: int | None = None, **options: Unpack[CallOptions]
    ) -> Agent:
        """Fetch an agent (its latest version unless ``version`` is given)."""
        return await self._call(
            "GET",
            f"/agents/{segment(agent_id)}",
            structure_agent,
            options,
            params=list_params(version=version),
        )

    async def update(self, agent_id: str, **fields: Any) -> Agent:
        """Update an agent; pass the current ``version`` for optimistic concurrency."""
        options = CallOptions()
        for name in ("extra_headers", "extra_query", "extra_body", "timeout"):
            if name in fields:
                options[name] = fields.pop(name)
        if "tools" in fields:
            fields["tools"] = definitions(fields["tools"])
        return await self._call(
            "POST", f"/agents/{segment(agent_id)}", structure_agent, options, json=fields
        )

    def list(
        self,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Agent]:
        """Iterate agents, fetching pages as needed."""
        params = list_params(limit=limit, include_archived=include_archived)
        return AsyncPaginator(
            self._http, "/agents", params, structure_agent, options=_options(options)
        )

    async def archive(self, agent_id: str, **options: Unpack[CallOptions]) -> Agent:
        """Archive an agent."""
        return await self._call(
            "POST", f"/agents/{segment(agent_id)}/archive", structure_agent, options
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
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Environment:
        """Create an environment (``config`` defaults to ``{"type": "cloud"}``)."""
        body: dict[str, Any] = {"name": name, "config": dict(config or {"type": "cloud"})}
        _put(body, description=description, metadata=metadata)
        return await self._call(
            "POST",
            "/environments",
            structure_environment,
            options,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def retrieve(self, environment_id: str, **options: Unpack[CallOptions]) -> Environment:
        """Fetch an environment."""
        return await self._call(
            "GET", f"/environments/{segment(environment_id)}", structure_environment, options
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
        return AsyncPaginator(
            self._http, "/environments", params, structure_environment, options=_options(options)
        )

    async def archive(self, environment_id: str, **options: Unpack[CallOptions]) -> Environment:
        """Archive an environment."""
        return await self._call(
            "POST",
            f"/environments/{segment(environment_id)}/archive",
            structure_environment,
            options,
        )
