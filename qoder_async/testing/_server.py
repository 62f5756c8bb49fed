"""`FakeQoderServer`: the Qoder "Managed" Cloud Agents API on 127.0.0.1.

Request path through the app, in order (one middleware does it all):

1. record the request (``server.requests``) and give it an ``x-request-id``
   (random: unique across servers, whatever their seeds);
   a body over ``max_body_bytes`` is recorded empty and answered 413
   ``request_too_large`` right away;
2. a matching canned response (``faults.respond_next``) wins outright;
3. the download links under ``STORAGE_PATH`` (another origin in real life)
   skip everything below but the handler: no throttling, no credentials;
4. throttling faults (429/503/529 with ``Retry-After``), like a gateway would;
5. unregistered route or method -> plain-text ``404 page not found`` (no JSON);
6. ``Authorization: Bearer <token>`` or 401;
7. ``Idempotency-Key``/``X-Idempotency-Key`` on POST/DELETE: replay or 409;
8. the handler; `ApiError` becomes the JSON error envelope;
9. ``faults.slow_seconds`` before any non-stream response goes out.

Lists default to ``order=desc`` (newest first) for sessions, agents, agent
versions, environments and files, and to ``order=asc`` for events, threads,
thread events, session resources and models. Idempotency records are kept for
2xx answers only (plus the stored-but-500 fault), so a request that failed can
be retried with the same key and really runs again.

Sending events (``POST /sessions/{id}/events``), the rules a client meets:

* The whole batch is checked against the session first; one bad event stores
  nothing.
* ``user.message``/``user.define_outcome`` while a turn runs: 409
  ``conflict_error`` (``BUSY_MESSAGE``). A turn *paused* on
  ``requires_action`` still runs: ``GET /sessions/{id}`` then reports
  ``status: "idle"`` (the pause stored a ``session.status_idle``), yet a new
  message is answered 409 (``PAUSED_MESSAGE``) until every pending id is
  answered or a ``user.interrupt`` (which may come first in the same batch)
  ends the turn. Real servers have been seen doing exactly this.
* An answer (``user.custom_tool_result``, ``user.tool_confirmation``) naming a
  tool use of this session that is not awaiting one (already answered, or
  never asked for): 409 ``conflict_error`` ``"tool results not awaited: <id>
  is not awaiting a result"``. Naming an id that is not a tool-use event of
  this session: 400 ``invalid_request_error``. ``user.tool_result`` is never
  checked.
* An answer to a tool use asked in a sub-agent thread must echo that
  thread's ``session_thread_id`` (400 naming the field otherwise); a
  ``user.interrupt`` naming a thread must name one of the session's.
* Content blocks with ``source: {"type": "file", "file_id"}`` must name a
  stored file (400 otherwise).
* The idempotency 409s say ``Idempotency-Key`` in their message
  (``IDEMPOTENCY_REUSE_MESSAGE``, ``IDEMPOTENCY_IN_PROGRESS_MESSAGE``); the
  others never do.

Secrets a request hands over (a repository's ``authorization_token`` or
``password``) are kept apart (`resource_secret`) and never sent back.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import hashlib
import hmac
import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from ._agent import Script, TurnContext, default_script, run_turn
from ._cassette import ORIGIN_PATH, Replay, load_cassette
from ._deployments import DeploymentStore
from ._faults import CannedResponse, Dialect, Faults
from ._files import FileStore
from ._params import (
    RESOURCE_SECRETS,
    agent_ref,
    answer_ref,
    archiver,
    check_env_vars,
    check_list,
    check_metadata,
    check_model,
    check_object,
    check_resource,
    check_str,
    check_str_list,
    delta_kinds,
    file_refs,
    int_param,
    lister,
    paginate,
    parse_multipart,
    path_id,
    read_body,
    show,
    validate_input_event,
)
from ._sse import StreamConnection, resume_position
from ._state import SessionState, ThreadState
from ._vaults import ManagedStore
from ._webhooks import WebhookDelivery, WebhookSender
from ._wire import ApiError, Ids, bad_request, conflict, find, json_response, not_found

__all__ = ["FakeQoderServer", "RecordedRequest"]

#: The token a `FakeQoderServer` accepts unless told otherwise.
DEFAULT_TOKEN = "qoder-fake-token"

BASE_PATH = "/api/v1/cloud"
#: Unauthenticated download links (``GET /files/{id}/content`` may point there).
STORAGE_PATH = "/_fake_storage"

BUSY_MESSAGE = "session is running; wait for session.status_idle before sending a new user.message"
PAUSED_MESSAGE = (
    "session is waiting for tool results (requires_action); answer them or send "
    "user.interrupt before sending a new user.message"
)
IDEMPOTENCY_REUSE_MESSAGE = "Idempotency-Key reused with a different request body"
IDEMPOTENCY_IN_PROGRESS_MESSAGE = "A request with this Idempotency-Key is in progress"

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("qoder_fake_request_id")
_TURN_STARTERS = ("user.message", "user.define_outcome")
_ANSWERS = ("user.custom_tool_result", "user.tool_confirmation", "user.tool_result")
_TOOL_USES = ("agent.custom_tool_use", "agent.tool_use", "agent.mcp_tool_use")
_LISTEN_BACKLOG = 4096
# Stored status events -> the webhook Qoder's catalogue sends for them (the primary thread's).
_STATUS_WEBHOOKS = {
    "session.status_running": "session.status_run_started",
    "session.status_idle": "session.status_idled",
}
#: How a session's plain fields are read from a create or update body (absent: the default).
_SESSION_FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "title": lambda body: check_str(body, "title") or "",
    "metadata": lambda body: check_metadata(body) or {},
    "environment_variables": lambda body: check_env_vars(body) or {},
    "vault_ids": lambda body: check_str_list(body, "vault_ids") or [],
    "memory_store_ids": lambda body: check_str_list(body, "memory_store_ids") or [],
    "budget": lambda body: check_object(body, "budget"),
}
_MODELS = [
    {"id": name, "type": "model", "display_name": title, "is_enabled": True}
    for name, title in (("ultimate", "Ultimate"), ("auto", "Auto"))
]


@attrs.frozen
class RecordedRequest:
    """One request as the server received it (``server.requests``).

    ``path`` is the full URL path (``/api/v1/cloud/...``), ``query`` maps each
    parameter to all its values, ``headers`` has lower-case names (repeated
    headers joined with ``", "``), ``body`` is the raw body.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@attrs.define
class _IdempotencyRecord:
    fingerprint: tuple[str, str, str]
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"


class _StoredButFailed(Exception):
    """The work is done and ``response`` is its real answer, but answer a 500."""

    def __init__(self, response: web.Response) -> None:
        super().__init__("stored, then failed")
        self.response = response


def _error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> web.Response:
    # The envelope names the request (required, the x-request-id value), as the service's does.
    return json_response(error.status, error.body(_REQUEST_ID.get("") or None), headers)


class FakeQoderServer:
    """A real HTTP + SSE server imitating the Qoder Managed Cloud Agents API.

    Runs an ``aiohttp.web`` app on ``host``:``port`` (port 0 = pick a free
    one) under ``/api/v1/cloud``: sessions (with resources and sub-agent
    threads), events (send, list, SSE stream with ``Last-Event-ID`` replay
    and ``event_deltas[]`` previews), thread events and streams, files,
    agents (with versions), environments and models; deployments (with
    runs), dreams and self-hosted work queues (``_deployments``); vaults with
    credentials, skills with versions, memory stores with memories (``managed``,
    ``_vaults``). Each turn is played by
    ``script`` (`default_script` when ``None``). ``faults`` and ``dialect``
    can be changed at any time. Use it as an async context manager, or call
    `start` and `close`.

    With ``webhook_url`` the server also POSTs signed webhooks
    (``session.created``, ``.updated``, ``.archived``, ``.deleted``; see
    ``_webhooks``) to that URL. ``webhook_events_on_turn_end`` adds the
    session status webhooks of Qoder's catalogue, as an endpoint subscribed
    to them gets them: ``session.status_run_started`` when the session starts
    running (a turn starts, or resumes after tool results) and
    ``session.status_idled`` when it goes idle (the turn ended, or paused for
    tool results). Like every session webhook, their ``data`` is ``{"type",
    "id": <session id>, "schema_version": 1}``: ids only, no event content.

    Args:
        token: the only accepted Bearer token.
        script: the scripted agent that plays every turn.
        faults: fault switches (all off by default).
        dialect: wire-format switches (newest documented format by default).
        heartbeat_interval: seconds without output after which a stream gets
            a heartbeat.
        host: interface to listen on.
        port: port to listen on; 0 picks a free port.
        seed: seed of the server's ``random.Random`` (random faults, resource
            ids; request ids are random whatever the seed).
        record_requests: keep every request in `requests`.
        max_body_bytes: larger request bodies get 413 ``request_too_large``.
        webhook_url: where to POST webhooks (``None``: no webhooks).
        webhook_secret: the signing secret (``whsec_<base64>``); a fresh one
            when ``None`` (read it back from `webhook_secret`).
        webhook_events_on_turn_end: also send ``session.status_run_started``
            and ``session.status_idled``.
        webhook_retry_delays: seconds between delivery attempts; a delivery
            is given up after the last one.
        cassette: a cassette written by `record`: the server answers from it
            instead of running an agent (the rules: ``_cassette``); ``faults``
            still apply on top. Raises ``ValueError`` when it is not a cassette
            (another version, a bad line).
        speed: with ``cassette``, streams replay at ``speed`` times the recorded
            pace (2.0: twice as fast); 0 sends every frame without waiting.
    """

    #: The token accepted when none is given.
    DEFAULT_TOKEN: ClassVar[str] = DEFAULT_TOKEN

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        script: Script | None = None,
        faults: Faults | None = None,
        dialect: Dialect | None = None,
        heartbeat_interval: float = 15.0,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        record_requests: bool = True,
        max_body_bytes: int = 32 * 1024 * 1024,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_events_on_turn_end: bool = False,
        webhook_retry_delays: Sequence[float] = (0.05, 0.25, 1.0, 5.0),
        cassette: str | os.PathLike[str] | None = None,
        speed: float = 1.0,
    ) -> None:
        self.token = token
        self.script: Script | None = script
        self.faults = faults if faults is not None else Faults()
        self.dialect = dialect if dialect is not None else Dialect()
        self.heartbeat_interval = heartbeat_interval
        self.host = host
        self.port = port
        self.record_requests = record_requests
        self.max_body_bytes = max_body_bytes
        self.webhook_events_on_turn_end = webhook_events_on_turn_end
        #: Every request received, in order (see `RecordedRequest`).
        self.requests: list[RecordedRequest] = []
        #: How often each fault fired, by `Faults` attribute name.
        self.fault_counts: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._ids = Ids(random.Random(seed + 1))
        self._environments: dict[str, dict[str, Any]] = {}
        self._agents: dict[str, list[dict[str, Any]]] = {}
        self._sessions: dict[str, SessionState] = {}
        self._files = FileStore(self._ids, random.Random(seed + 2))
        self._deployments = DeploymentStore(
            self._ids,
            create_session=self._create_session,
            agent=self._agent,
            environment=self._environment,
            session_exists=lambda sid: sid in self._sessions and not self._sessions[sid].deleted,
            create_status=lambda: self.dialect.create_status,
        )
        self._idempotency: dict[tuple[str, str], _IdempotencyRecord] = {}
        #: Vaults (with credentials), skills and memory stores (see ``_vaults``).
        self.managed = ManagedStore(self._ids, lambda: self.dialect.create_status)
        self._replay = (
            Replay(load_cassette(cassette), speed=speed, ids=self._ids)
            if cassette is not None
            else None
        )
        self._webhooks: WebhookSender | None = None
        if webhook_url is not None:
            if webhook_secret is None:
                raw = random.Random(seed + 3).randbytes(24)
                webhook_secret = "whsec_" + base64.b64encode(raw).decode()
            self._webhooks = WebhookSender(
                webhook_url, webhook_secret, self._ids, webhook_retry_delays
            )
        #: The webhook signing secret (``None`` without ``webhook_url``).
        self.webhook_secret = webhook_secret if webhook_url is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._open_streams = 0
        self._stream_connections = 0

    def __repr__(self) -> str:
        where = self.base_url if self._runner is not None else "not started"
        return f"<FakeQoderServer {where}>"

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/api/v1/cloud`` (no trailing slash); needs `start`."""
        if self._runner is None:
            raise RuntimeError("FakeQoderServer is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{BASE_PATH}"

    @property
    def open_streams(self) -> int:
        """SSE stream handlers running right now (should drop to 0 when clients leave)."""
        return self._open_streams

    @property
    def stream_connections(self) -> int:
        """SSE stream connections accepted since the server was created."""
        return self._stream_connections

    async def start(self) -> None:
        """Start listening; returns once the port is bound (`port` is then set)."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware], client_max_size=self.max_body_bytes)
        self._add_routes(app)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        # A deep accept queue: aiohttp's default (128) overflows when a fleet or a
        # test opens hundreds of connections at once, and every dropped SYN costs
        # its client a one-second retransmit. The kernel caps it at somaxconn.
        site = web.TCPSite(runner, self.host, self.port, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._closing = False
        self._runner = runner
        if self._webhooks is not None:
            self._webhooks.start()

    async def close(self) -> None:
        """Stop: end every stream cleanly, cancel running turns, close the port.

        Idempotent.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        for session in self._sessions.values():
            session.drop_turn()  # the server dies mid-turn: no closing idle, no waiter hangs
            session.notify()
        for state in self._replay.states() if self._replay is not None else ():
            state.notify()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._webhooks is not None:
            await self._webhooks.close()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ inspection

    def _state(self, session_id: str) -> SessionState:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise KeyError(f"unknown session {session_id!r}") from None

    def stored_events(self, session_id: str) -> list[dict[str, Any]]:
        """Every stored event of the session, in order (deep copies, canonical form).

        Canonical means: what the server stored, before any `Dialect`
        rendering (``turn_id`` present, content as blocks, thinking under
        ``thinking``). Deleted sessions stay inspectable.
        """
        return [copy.deepcopy(s.event) for s in self._state(session_id).log]

    def turn_events(self, session_id: str, turn_id: str) -> list[dict[str, Any]]:
        """The stored events whose ``turn_id`` is ``turn_id``, in order (copies)."""
        return [e for e in self.stored_events(session_id) if e.get("turn_id") == turn_id]

    def user_messages(self, session_id: str) -> list[dict[str, Any]]:
        """The stored ``user.message`` events of the session (copies)."""
        return [e for e in self.stored_events(session_id) if e["type"] == "user.message"]

    def session(self, session_id: str) -> dict[str, Any]:
        """The session object as ``GET /sessions/{id}`` would return it."""
        return self._state(session_id).snapshot()

    def threads(self, session_id: str) -> list[dict[str, Any]]:
        """The session's sub-agent threads as ``GET .../threads`` returns them, oldest first."""
        return [t.snapshot() for t in self._state(session_id).threads.values()]

    def file_content(self, file_id: str) -> bytes:
        """The bytes of a stored file; ``KeyError`` when there is none."""
        stored = self._files.files.get(file_id)
        if stored is None:
            raise KeyError(f"unknown file {file_id!r}")
        return stored.content

    def resource_secret(self, session_id: str, resource_id: str) -> str | None:
        """The token/password given for a repository resource (never sent back by the API)."""
        return self._state(session_id).resource_secrets.get(resource_id)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook event queued so far, in order, with its delivery attempts."""
        return list(self._webhooks.deliveries) if self._webhooks is not None else []

    async def wait_webhooks(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every queued webhook was delivered or given up.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        if self._webhooks is not None:
            async with asyncio.timeout(timeout):
                await self._webhooks.drained()

    async def wait_idle(self, session_id: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until no turn runs in the session (a paused turn still runs).

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._state(session_id).idle.wait()

    async def wait_for_event(
        self,
        session_id: str,
        event_type: str,
        *,
        after_id: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """The first stored event of ``event_type`` (after ``after_id``), waiting for it.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        state = self._state(session_id)
        pos = state.by_id[after_id].log_index + 1 if after_id else 0
        waker = asyncio.Event()
        state.wakers.add(waker)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    waker.clear()
                    while pos < len(state.log):
                        event = state.log[pos].event
                        pos += 1
                        if event["type"] == event_type:
                            return copy.deepcopy(event)
                    await waker.wait()
        finally:
            state.wakers.discard(waker)

    # ------------------------------------------------------------------ seeding

    def add_environment(self, name: str = "env", **fields: Any) -> dict[str, Any]:
        """Create an environment without HTTP; returns it as the API would.

        ``fields``: ``description``, ``config``, ``metadata``. Raises
        ``ValueError`` on invalid fields.
        """
        return self._seed(self._create_environment, {"name": name, **fields})

    def add_agent(
        self, name: str = "agent", model: str | dict[str, Any] = "ultimate", **fields: Any
    ) -> dict[str, Any]:
        """Create an agent without HTTP; returns it as the API would.

        ``fields``: ``system``/``instructions``, ``description``, ``tools``,
        ``mcp_servers``, ``skills``, ``metadata``. Raises ``ValueError`` on
        invalid fields.
        """
        return self._seed(self._create_agent, {"name": name, "model": model, **fields})

    def add_file(
        self,
        content: bytes,
        filename: str = "file.txt",
        *,
        mime_type: str | None = None,
        purpose: str | None = None,
        downloadable: bool = True,
    ) -> dict[str, Any]:
        """Store a file without HTTP; returns its metadata as ``GET /files/{id}`` would.

        ``mime_type`` is guessed from ``filename`` when ``None``. A file that
        is not ``downloadable`` answers 403 to ``GET /files/{id}/content``.
        """
        return self._files.add(
            content, filename, mime_type=mime_type, purpose=purpose, downloadable=downloadable
        )

    def add_session(
        self,
        agent_id: str | None = None,
        environment_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a session without HTTP; returns it as the API would.

        Without ``agent_id``/``environment_id`` a fresh agent/environment is
        created. ``fields``: any ``POST /sessions`` field (``title``,
        ``metadata``, ``resources``, ``environment_variables``...);
        ``initial_events`` start a turn, so call this inside the running event
        loop then. Raises
        ``ValueError`` on invalid fields and ``KeyError`` for unknown ids.
        """
        if agent_id is None:
            agent_id = self.add_agent()["id"]
        if environment_id is None:
            environment_id = self.add_environment()["id"]
        body = {"agent": agent_id, "environment_id": environment_id, **fields}
        return self._seed(self._create_session, body)

    @staticmethod
    def _seed(
        create: Callable[[Mapping[str, Any]], dict[str, Any]], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A copy of ``create(body)``; a 404 raises ``KeyError``, other refusals ``ValueError``."""
        try:
            return copy.deepcopy(create(body))
        except ApiError as exc:
            if exc.status == 404:
                raise KeyError(exc.message) from None
            raise ValueError(exc.message) from None

    def add_work(
        self, environment_id: str, session_id: str, metadata: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Queue a work item for ``session_id`` on a self-hosted environment's queue.

        (A session created in an environment whose ``config.type`` is
        ``"self_hosted"`` is queued by itself.) Returns the item as ``GET
        .../work/{id}`` would.
        """
        return copy.deepcopy(self._deployments.add_work(environment_id, session_id, metadata))

    # ------------------------------------------------------------------ faults

    def _count_fault(self, name: str, n: int = 1) -> None:
        self.fault_counts[name] = self.fault_counts.get(name, 0) + n

    def _take_canned(self, request: web.Request) -> CannedResponse | None:
        for i, entry in enumerate(self.faults.respond_next):
            canned = CannedResponse(*entry)
            if canned.method is not None and canned.method.upper() != request.method:
                continue
            if re.search(canned.path, request.path):
                del self.faults.respond_next[i]
                self._count_fault("respond_next")
                return canned
        return None

    def _throttle(self) -> web.Response | None:
        faults = self.faults
        if faults.throttle_first > 0:
            faults.throttle_first -= 1
            self._count_fault("throttle_first")
        elif faults.throttle_probability > 0 and self._rng.random() < faults.throttle_probability:
            self._count_fault("throttle_probability")
        else:
            return None
        status = faults.throttle_status
        headers: dict[str, str] = {}
        if faults.retry_after is not None:
            headers["Retry-After"] = f"{faults.retry_after:g}"
            headers["retry-after-ms"] = str(round(faults.retry_after * 1000))
        if status == 429:
            error = ApiError(429, "rate_limit_error", "Too many requests; slow down.")
        elif status in (503, 529):
            error = ApiError(status, "overloaded_error", "The service is temporarily overloaded.")
        else:
            error = ApiError(status, "api_error", "Internal server error (injected).")
        return _error_response(error, headers)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = self._ids.request()
        _REQUEST_ID.set(request_id)
        too_large = False
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body, too_large = b"", True
        if self.record_requests:
            headers: dict[str, str] = {}
            for name, value in request.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            query: dict[str, list[str]] = {}
            for name, value in request.query.items():
                query.setdefault(name, []).append(value)
            self.requests.append(
                RecordedRequest(request.method, request.path, query, headers, body)
            )
        try:
            if too_large:
                message = f"Request body is larger than {self.max_body_bytes} bytes"
                raise ApiError(413, "request_too_large", message)
            response = await self._dispatch(request, handler, body)
        except ApiError as exc:
            response = _error_response(exc)
        if not response.prepared:
            if "x-request-id" not in response.headers:
                response.headers["x-request-id"] = request_id
            if self.faults.slow_seconds > 0:
                self._count_fault("slow_seconds")
                await asyncio.sleep(self.faults.slow_seconds)
        return response

    async def _dispatch(
        self, request: web.Request, handler: Handler, body: bytes
    ) -> web.StreamResponse:
        canned = self._take_canned(request)
        if canned is not None:
            return web.Response(status=canned.status, headers=canned.headers, body=canned.body)
        if request.path.startswith(STORAGE_PATH + "/"):
            # Another origin in real life: no gateway faults, no credentials.
            return await handler(request)
        throttled = self._throttle()
        if throttled is not None:
            return throttled
        if self._replay is not None:
            if request.path.startswith(ORIGIN_PATH + "/"):  # another origin: no credentials
                index = request.path.removeprefix(ORIGIN_PATH + "/")
                return self._replay.answer_origin(index, request.method)
            self._authenticate(request)
            return await self._replayed(request, body, self._replay)
        if request.match_info.http_exception is not None:
            return web.Response(
                status=404, text="404 page not found", content_type="text/plain", charset="utf-8"
            )
        self._authenticate(request)
        key = request.headers.get("Idempotency-Key") or request.headers.get("X-Idempotency-Key")
        if key and request.method in ("POST", "PUT", "DELETE"):
            return await self._idempotent(request, handler, body, key)
        return await handler(request)

    async def _replayed(
        self, request: web.Request, body: bytes, replay: Replay
    ) -> web.StreamResponse:
        path = request.path.removeprefix(BASE_PATH)
        if request.method == "GET" and replay.is_stream(path):
            state = replay.state(path)
            if path not in replay.feeders:
                task = asyncio.create_task(replay.feed(path))
                replay.feeders[path] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            cursor = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
            return await self._serve_stream(request, state, cursor or None, None)
        origin = f"{request.scheme}://{request.host}"
        return replay.answer(request.method, path, body, request.content_type, origin)

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        ):
            raise ApiError(401, "authentication_error", "Invalid API key or token.")

    async def _idempotent(
        self, request: web.Request, handler: Handler, body: bytes, key: str
    ) -> web.StreamResponse:
        scope = (self.token, key)
        fingerprint = (request.method, request.path, hashlib.sha256(body).hexdigest())
        record = self._idempotency.get(scope)
        if record is not None:
            if record.fingerprint != fingerprint:
                raise conflict(IDEMPOTENCY_REUSE_MESSAGE)
            if record.status is None:
                raise conflict(IDEMPOTENCY_IN_PROGRESS_MESSAGE)
            return web.Response(
                status=record.status,
                body=record.body,
                content_type=record.content_type,
                headers={"Idempotent-Replayed": "true"},
            )
        record = self._idempotency[scope] = _IdempotencyRecord(fingerprint)
        try:
            response = await handler(request)
        except _StoredButFailed as failed:
            self._save(record, failed.response)
            return _error_response(
                ApiError(500, "api_error", "Internal server error (injected after store).")
            )
        except BaseException:
            del self._idempotency[scope]
            raise
        if isinstance(response, web.Response) and 200 <= response.status < 300:
            self._save(record, response)
        else:
            del self._idempotency[scope]
        return response

    @staticmethod
    def _save(record: _IdempotencyRecord, response: web.Response) -> None:
        body = response.body
        record.body = body if isinstance(body, bytes) else b""
        record.content_type = response.content_type
        record.status = response.status

    # ------------------------------------------------------------------ routes

    def _add_routes(self, app: web.Application) -> None:
        b, r = BASE_PATH, app.router
        environment, agent = path_id(self._environment), path_id(self._agent)
        session, file = path_id(self._session), path_id(self._files.get)
        r.add_post(f"{b}/environments", self._h_create_environment)
        r.add_get(
            f"{b}/environments",
            lister(lambda _: [*self._environments.values()], order="desc", archivable=True),
        )
        r.add_get(f"{b}/environments/{{id}}", show(environment))
        r.add_post(f"{b}/environments/{{id}}", self._h_update_environment)
        r.add_delete(f"{b}/environments/{{id}}", self._h_delete_environment)
        archive_env = archiver(environment, self._ids, status="archived")
        r.add_post(f"{b}/environments/{{id}}/archive", archive_env)
        r.add_post(f"{b}/agents", self._h_create_agent)
        r.add_get(
            f"{b}/agents",
            lister(lambda _: [v[-1] for v in self._agents.values()], order="desc", archivable=True),
        )
        r.add_get(f"{b}/agents/{{id}}", self._h_get_agent)
        r.add_post(f"{b}/agents/{{id}}", self._h_update_agent)
        r.add_post(f"{b}/agents/{{id}}/archive", archiver(agent, self._ids))
        # Versions share the agent's id: their cursors are version numbers.
        r.add_get(
            f"{b}/agents/{{id}}/versions",
            lister(
                lambda request: self._agents[agent(request)["id"]],
                order="desc",
                key=lambda version: str(version["version"]),
            ),
        )
        r.add_post(f"{b}/sessions", self._h_create_session)
        r.add_get(f"{b}/sessions", self._h_list_sessions)
        r.add_get(f"{b}/sessions/{{id}}", show(lambda request: session(request).snapshot()))
        r.add_post(f"{b}/sessions/{{id}}", self._h_update_session)
        r.add_delete(f"{b}/sessions/{{id}}", self._h_delete_session)
        r.add_post(f"{b}/sessions/{{id}}/cancel", self._h_cancel_session)
        r.add_post(f"{b}/sessions/{{id}}/archive", self._h_archive_session)
        r.add_post(f"{b}/sessions/{{id}}/events", self._h_send_events)
        r.add_get(f"{b}/sessions/{{id}}/events", self._h_list_events)
        r.add_get(f"{b}/sessions/{{id}}/events/stream", self._h_stream)
        threads = f"{b}/sessions/{{id}}/threads"
        r.add_get(
            threads,
            lister(
                lambda request: [t.snapshot() for t in session(request).threads.values()],
                order="asc",
            ),
        )
        r.add_get(f"{threads}/{{tid}}", show(lambda request: self._thread(request)[1].snapshot()))
        r.add_post(f"{threads}/{{tid}}/archive", self._h_archive_thread)
        r.add_get(f"{threads}/{{tid}}/events", self._h_thread_events)
        r.add_get(f"{threads}/{{tid}}/stream", self._h_thread_stream)
        resources = f"{b}/sessions/{{id}}/resources"
        r.add_get(
            resources,
            lister(
                lambda request: copy.deepcopy([*session(request).resources.values()]),
                order="asc",
            ),
        )
        r.add_post(resources, self._h_add_resource)
        r.add_get(f"{resources}/{{rid}}", show(lambda request: self._resource(request)[1]))
        r.add_post(f"{resources}/{{rid}}", self._h_update_resource)
        r.add_delete(f"{resources}/{{rid}}", self._h_delete_resource)
        r.add_post(f"{b}/files", self._h_upload_file)
        r.add_get(f"{b}/files", self._h_list_files)
        r.add_get(f"{b}/files/{{id}}", show(lambda request: file(request).meta))
        r.add_delete(f"{b}/files/{{id}}", self._h_delete_file)
        r.add_get(f"{b}/files/{{id}}/content", self._h_file_content)
        r.add_get(f"{STORAGE_PATH}/files/{{id}}", self._h_storage_download)
        r.add_get(f"{b}/models", lister(lambda _: _MODELS, order="asc"))
        self._deployments.add_routes(app, b)
        self.managed.add_routes(r, b)

    # ------------------------------------------------------------------ environments

    def _environment(self, env_id: str) -> dict[str, Any]:
        return find(self._environments, env_id, "environment")

    @staticmethod
    def _environment_fields(body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if creating or "name" in body:
            fields["name"] = check_str(body, "name", required=True)
        if creating or "description" in body:
            fields["description"] = check_str(body, "description") or ""
        if creating or "config" in body:
            config = body.get("config", {"type": "cloud"})
            if not isinstance(config, dict):
                raise bad_request("config must be an object", "config")
            fields["config"] = copy.deepcopy(config)
        if creating or "metadata" in body:
            fields["metadata"] = check_metadata(body) or {}
        return fields

    def _create_environment(self, body: Mapping[str, Any]) -> dict[str, Any]:
        fields = {**self._environment_fields(body, creating=True), "status": "ready"}
        env = self._ids.stamped("env", "environment", fields)
        self._environments[env["id"]] = env
        return env

    async def _h_create_environment(self, request: web.Request) -> web.Response:
        env = self._create_environment(await read_body(request))
        return json_response(self.dialect.create_status, env)

    async def _h_update_environment(self, request: web.Request) -> web.Response:
        env = self._environment(request.match_info["id"])
        env.update(self._environment_fields(await read_body(request), creating=False))
        env["updated_at"] = self._ids.now()
        return json_response(200, env)

    async def _h_delete_environment(self, request: web.Request) -> web.Response:
        env = self._environment(request.match_info["id"])
        del self._environments[env["id"]]
        return json_response(200, {"id": env["id"], "type": "environment_deleted"})

    # ------------------------------------------------------------------ agents

    def _agent(self, agent_id: str, version: int | None = None) -> dict[str, Any]:
        versions = self._agents.get(agent_id)
        if versions is None:
            raise not_found("agent", agent_id)
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise not_found("agent version", f"{agent_id} v{version}")
        return versions[version - 1]

    def _agent_fields(self, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if creating or "name" in body:
            fields["name"] = check_str(body, "name", required=True)
        if creating or "model" in body:
            model = body.get("model")
            if model is None:
                raise bad_request("Missing required field: model", "model")
            fields["model"] = check_model(model, "model")
        system = check_str(body, "system")
        instructions = check_str(body, "instructions")
        if system is not None or instructions is not None or creating:
            fields["system"] = system if system is not None else instructions
            fields["instructions"] = instructions if instructions is not None else system
        if creating or "description" in body:
            fields["description"] = check_str(body, "description") or ""
        for name in ("tools", "mcp_servers", "skills"):
            if creating or name in body:
                fields[name] = check_list(body, name) or []
        if creating or "metadata" in body:
            fields["metadata"] = check_metadata(body) or {}
        if "multiagent" in body:
            fields["multiagent"] = copy.deepcopy(body["multiagent"])
        return fields

    def _create_agent(self, body: Mapping[str, Any]) -> dict[str, Any]:
        fields = {**self._agent_fields(body, creating=True), "version": 1}
        agent = self._ids.stamped("agent", "agent", fields)
        self._agents[agent["id"]] = [agent]
        return agent

    async def _h_create_agent(self, request: web.Request) -> web.Response:
        agent = self._create_agent(await read_body(request))
        return json_response(self.dialect.create_status, agent)

    async def _h_get_agent(self, request: web.Request) -> web.Response:
        version = int_param(request.query, "version")
        return json_response(200, self._agent(request.match_info["id"], version))

    async def _h_update_agent(self, request: web.Request) -> web.Response:
        current = self._agent(request.match_info["id"])
        body = await read_body(request)
        if current["archived_at"] is not None:
            raise bad_request("agent is archived")
        expected = body.get("version")
        if expected is not None and expected != current["version"]:
            raise conflict(f"agent version conflict: current version is {current['version']}")
        fields = self._agent_fields(body, creating=False)
        updated = {
            **copy.deepcopy(current),
            **fields,
            "version": current["version"] + 1,
            "updated_at": self._ids.now(),
        }
        self._agents[current["id"]].append(updated)
        return json_response(200, updated)

    # ------------------------------------------------------------------ sessions

    def _session(self, session_id: str) -> SessionState:
        state = self._sessions.get(session_id)
        if state is None or state.deleted:
            raise not_found("session", session_id)
        return state

    def _webhook(self, event_type: str, session_id: str, **fields: Any) -> None:
        if self._webhooks is not None:
            self._webhooks.send(event_type, session_id, **fields)

    def _on_store(self, state: SessionState, event: dict[str, Any]) -> None:
        if self.webhook_events_on_turn_end:
            kind = _STATUS_WEBHOOKS.get(event["type"])
            if kind is not None:
                self._webhook(kind, state.id)

    @staticmethod
    def _agent_overrides(ref: Mapping[str, Any], param: str) -> dict[str, Any]:
        """The agent fields a session may override (``system``, ``model``, lists)."""
        out: dict[str, Any] = {}
        if "system" in ref:
            out["system"] = out["instructions"] = check_str(ref, "system", within=param)
        if ref.get("model") is not None:
            out["model"] = check_model(ref["model"], f"{param}.model")
        for name in ("tools", "mcp_servers", "skills"):
            if name in ref:
                out[name] = check_list(ref, name) or []
        return out

    def _check_file_refs(self, content: Any, param: str) -> None:
        for j, file_id in file_refs(content):
            where = f"{param}[{j}].source.file_id"
            if not isinstance(file_id, str) or not file_id:
                raise bad_request(f"Missing required field: {where}", where)
            if file_id not in self._files.files:
                raise bad_request(f"file not found: {file_id}", where)

    def _new_resource(self, value: Any, param: str) -> tuple[dict[str, Any], str | None]:
        """A session resource checked (a ``file`` must exist) and given an id."""
        fields, secret = check_resource(value, param)
        if fields["type"] == "file" and fields["file_id"] not in self._files.files:
            raise bad_request(f"file not found: {fields['file_id']}", f"{param}.file_id")
        now = self._ids.now()
        resource = {"id": self._ids.resource("sesrsc"), **fields}
        resource["created_at"] = resource["updated_at"] = now
        return resource, secret

    def _create_session(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = body.get("agent")
        agent_id, version = agent_ref(ref, ("agent", "agent_with_overrides"))
        overrides = self._agent_overrides(ref, "agent") if isinstance(ref, dict) else {}
        environment_id = check_str(body, "environment_id", required=True)
        assert environment_id is not None
        plain = {name: read(body) for name, read in _SESSION_FIELDS.items()}
        incremental = body.get("incremental_streaming_enabled", False)
        if not isinstance(incremental, bool):
            raise bad_request(
                "incremental_streaming_enabled must be a boolean", "incremental_streaming_enabled"
            )
        initial = body.get("initial_events") or []
        if not isinstance(initial, list):
            raise bad_request("initial_events must be an array", "initial_events")
        initial_events = [validate_input_event(i, ev) for i, ev in enumerate(initial)]
        if any(ev["type"] not in _TURN_STARTERS for ev in initial_events):
            raise bad_request(
                "initial_events may only hold user.message and user.define_outcome",
                "initial_events",
            )
        if len(initial_events) > 1:
            raise bad_request("initial_events may start only one turn", "initial_events")
        for i, event in enumerate(initial_events):
            self._check_file_refs(event.get("content"), f"initial_events[{i}].content")
        resources = [
            self._new_resource(value, f"resources[{i}]")
            for i, value in enumerate(check_list(body, "resources") or [])
        ]
        agent = self._agent(agent_id, version)
        env = self._environment(environment_id)
        if agent["archived_at"] is not None:
            raise bad_request("agent is archived", "agent")
        if env["archived_at"] is not None:
            raise bad_request("environment is archived", "environment_id")
        snapshot = {
            key: copy.deepcopy(agent[key])
            for key in (
                "id",
                "type",
                "name",
                "description",
                "model",
                "system",
                "instructions",
                "tools",
                "mcp_servers",
                "skills",
                "version",
            )
        }
        snapshot.update(overrides)
        fields = {
            "agent": snapshot,
            "agent_id": agent["id"],
            "environment_id": env["id"],
            **plain,
            "incremental_streaming_enabled": incremental,
            "deployment_id": None,
            "outcome_evaluations": [],
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        resource = self._ids.stamped("sess", "session", fields)
        state = SessionState(self._ids, resource)
        state.on_store = lambda event: self._on_store(state, event)
        for item, secret in resources:
            state.resources[item["id"]] = item
            if secret is not None:
                state.resource_secrets[item["id"]] = secret
        self._sessions[state.id] = state
        self._deployments.session_created(resource)
        self._webhook("session.created", state.id)
        if initial_events:
            self._apply_events(state, initial_events)
        return state.snapshot()

    async def _h_create_session(self, request: web.Request) -> web.Response:
        session = self._create_session(await read_body(request))
        return json_response(self.dialect.create_status, session)

    async def _h_list_sessions(self, request: web.Request) -> web.Response:
        query = request.query
        agent_id = query.get("agent_id")
        statuses = set(query.getall("statuses[]", [])) | set(query.getall("statuses", []))

        def keep(session: dict[str, Any]) -> bool:
            if agent_id and session["agent_id"] != agent_id:
                return False
            return not statuses or session["status"] in statuses

        sessions = [s.snapshot() for s in self._sessions.values() if not s.deleted]
        page = paginate(sessions, query, default_order="desc", keep=keep, archivable=True)
        return json_response(200, page)

    async def _h_update_session(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        body = await read_body(request)
        changes = {
            name: read(body)
            for name, read in _SESSION_FIELDS.items()
            if name in body and name != "memory_store_ids"  # fixed at creation
        }
        if "agent" in body:
            overrides = self._agent_overrides(check_object(body, "agent") or {}, "agent")
            changes["agent"] = {**copy.deepcopy(state.resource["agent"]), **overrides}
        if changes:
            state.resource.update(changes)
            # Variable values may be secrets: the event only says they changed.
            if "environment_variables" in changes:
                changes["environment_variables"] = sorted(changes["environment_variables"])
            state.store("session.updated", copy.deepcopy(changes), turn_id=None)
            self._webhook("session.updated", state.id)
        state.resource["updated_at"] = self._ids.now()
        return json_response(200, state.snapshot())

    async def _h_cancel_session(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        status = self.dialect.cancel_status if state.abort_turn() else 200
        return json_response(status, {"id": state.id, "type": "session", "status": "canceling"})

    async def _h_archive_session(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        if state.resource["archived_at"] is None:
            state.resource["archived_at"] = state.resource["updated_at"] = self._ids.now()
            self._webhook("session.archived", state.id)
        return json_response(200, state.snapshot())

    async def _h_delete_session(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        turn = state.drop_turn()  # deleting ends the session, not just the turn
        if turn is not None:
            turn.answered.set()
            if turn.task is not None:
                turn.task.cancel()
        state.store("session.deleted", {}, turn_id=None)
        state.deleted = True
        state.notify()
        self._webhook("session.deleted", state.id)
        return json_response(200, {"id": state.id, "type": "session_deleted"})

    # ------------------------------------------------------------------ events

    def _begin_turn(self, state: SessionState, turn_id: str, trigger: dict[str, Any]) -> None:
        turn = state.start_turn(turn_id, trigger)
        ctx = TurnContext(self, state, turn)
        script = self.script or default_script
        task = asyncio.get_running_loop().create_task(
            run_turn(ctx, state, turn, script), name=f"qoder-fake-turn-{turn_id}"
        )
        turn.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _apply_events(
        self, state: SessionState, events: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Check the whole batch against the session state, then store and act on it."""
        if state.resource["archived_at"] is not None:
            raise bad_request("session is archived; it cannot receive events")
        running = state.turn is not None
        paused = state.turn is not None and state.turn.paused
        pending = list(state.turn.pending) if state.turn is not None else []
        for i, event in enumerate(events):
            kind = event["type"]
            if kind in ("user.message", "system.message"):
                self._check_file_refs(event.get("content"), f"events[{i}].content")
            thread_id = event.get("session_thread_id")
            if (
                kind == "user.interrupt"
                and thread_id is not None
                and thread_id not in state.threads
            ):
                where = f"events[{i}].session_thread_id"
                raise bad_request(f"{where}: no thread {thread_id!r} in this session", where)
            if kind in _TURN_STARTERS:
                if running:
                    message = PAUSED_MESSAGE if paused else BUSY_MESSAGE
                    raise conflict(message)
                running, paused, pending = True, False, []
            elif kind == "user.interrupt":
                running, paused, pending = False, False, []
            elif kind in _ANSWERS:
                ref = answer_ref(event)
                self._check_thread_echo(state, i, event, ref)
                if ref in pending:
                    pending.remove(ref)
                elif kind != "user.tool_result":
                    target = state.by_id.get(ref or "")
                    if target is None or target.event["type"] not in _TOOL_USES:
                        raise bad_request(
                            f"events[{i}]: {ref} is not a tool use of this session",
                            f"events[{i}]",
                        )
                    raise conflict(f"tool results not awaited: {ref} is not awaiting a result")
        stored: list[dict[str, Any]] = []
        for event in events:
            kind = event["type"]
            fields = {k: v for k, v in event.items() if k != "type"}
            turn = state.turn
            if kind in _TURN_STARTERS:
                turn_id = self._ids.resource("turn")
                stored_event = state.store(kind, fields, turn_id=turn_id)
                self._begin_turn(state, turn_id, stored_event)
            elif kind == "user.interrupt":
                stored_event = state.store(kind, fields, turn_id=turn.id if turn else None)
                state.abort_turn()
            else:
                stored_event = state.store(kind, fields, turn_id=turn.id if turn else None)
                ref = answer_ref(event)
                if turn is not None and kind in _ANSWERS and ref in turn.pending:
                    turn.pending.remove(ref)
                    turn.answers.append(stored_event)
                    turn.answered.set()
            stored.append(stored_event)
        return stored

    @staticmethod
    def _check_thread_echo(
        state: SessionState, index: int, event: dict[str, Any], ref: str | None
    ) -> None:
        """An answer to a sub-agent thread's tool use must echo its ``session_thread_id``."""
        target = state.by_id.get(ref or "")
        thread_id = target.event.get("session_thread_id") if target is not None else None
        echoed = event.get("session_thread_id")
        if thread_id is None or echoed == thread_id:
            return
        where = f"events[{index}].session_thread_id"
        if echoed is None:
            raise bad_request(
                f"Missing required field: {where} ({ref} was asked in thread {thread_id}; "
                "echo its session_thread_id)",
                where,
            )
        raise bad_request(f"{where} must be {thread_id}, the thread that asked {ref}", where)

    async def _h_send_events(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        body = await read_body(request)
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise bad_request("events must be a non-empty array", "events")
        checked = [validate_input_event(i, ev) for i, ev in enumerate(events)]
        stored = self._apply_events(state, checked)
        data = [self.dialect.render(e) for e in stored]
        if not self.dialect.send_turn_ids:
            for event in data:
                event.pop("turn_id", None)
        if self.faults.empty_send_data > 0:
            self.faults.empty_send_data -= 1
            self._count_fault("empty_send_data")
            data = []
        response = json_response(self.dialect.send_status, {"data": data})
        if self.faults.fail_send_after_store > 0:
            self.faults.fail_send_after_store -= 1
            self._count_fault("fail_send_after_store")
            raise _StoredButFailed(response)
        return response

    async def _h_list_events(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        query = request.query
        types: set[str] = set(query.getall("types[]", []))
        for value in query.getall("type", []):
            types.update(t for t in value.split(",") if t)
        keep = (lambda e: e["type"] in types) if types else None
        return self._events_page(request, [s.event for s in state.log], keep)

    def _events_page(
        self,
        request: web.Request,
        events: list[dict[str, Any]],
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> web.Response:
        page = paginate(events, request.query, default_order="asc", keep=keep)
        page["data"] = [self.dialect.render(e) for e in page["data"]]
        return json_response(200, page)

    async def _h_stream(self, request: web.Request) -> web.StreamResponse:
        state = self._session(request.match_info["id"])
        cursor = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        return await self._serve_stream(request, state, cursor or None, None)

    async def _serve_stream(
        self,
        request: web.Request,
        state: SessionState,
        cursor: str | None,
        thread_id: str | None,
    ) -> web.StreamResponse:
        if cursor and self.faults.ignore_last_event_id:
            self._count_fault("ignore_last_event_id")
            cursor = None
        deltas = frozenset(
            delta_kinds(
                [
                    *request.query.getall("event_deltas[]", []),
                    *request.query.getall("event_deltas", []),
                ]
            )
        )
        start, stored_before = resume_position(state, cursor, thread_id)
        self._open_streams += 1
        self._stream_connections += 1
        try:
            if self.faults.slow_stream_seconds > 0:
                self._count_fault("slow_stream_seconds")
                await asyncio.sleep(self.faults.slow_stream_seconds)
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                    "x-request-id": _REQUEST_ID.get(""),
                },
            )
            connection = StreamConnection(
                self, state, request, response, deltas, thread_id, cursor=cursor
            )
            await response.prepare(request)
            await connection.run(cursor, start, stored_before)
            return response
        finally:
            self._open_streams -= 1

    # ------------------------------------------------------------------ threads

    def _thread(self, request: web.Request) -> tuple[SessionState, ThreadState]:
        state = self._session(request.match_info["id"])
        return state, find(state.threads, request.match_info["tid"], "thread")

    async def _h_archive_thread(self, request: web.Request) -> web.Response:
        _, thread = self._thread(request)
        if thread.resource["archived_at"] is None:
            thread.resource["archived_at"] = thread.resource["updated_at"] = self._ids.now()
        return json_response(200, thread.snapshot())

    async def _h_thread_events(self, request: web.Request) -> web.Response:
        state, thread = self._thread(request)
        events = [s.event for s in state.log if s.event.get("session_thread_id") == thread.id]
        return self._events_page(request, events)

    async def _h_thread_stream(self, request: web.Request) -> web.StreamResponse:
        # The thread stream takes no last_event_id parameter, only the header.
        state, thread = self._thread(request)
        cursor = request.headers.get("Last-Event-ID") or None
        return await self._serve_stream(request, state, cursor, thread.id)

    # ------------------------------------------------------------------ session resources

    def _resource(self, request: web.Request) -> tuple[SessionState, dict[str, Any]]:
        state = self._session(request.match_info["id"])
        return state, find(state.resources, request.match_info["rid"], "session resource")

    async def _h_add_resource(self, request: web.Request) -> web.Response:
        state = self._session(request.match_info["id"])
        resource, secret = self._new_resource(await read_body(request), "body")
        state.resources[resource["id"]] = resource
        if secret is not None:
            state.resource_secrets[resource["id"]] = secret
        return json_response(self.dialect.create_status, resource)

    async def _h_update_resource(self, request: web.Request) -> web.Response:
        state, resource = self._resource(request)
        body = await read_body(request)
        field = RESOURCE_SECRETS.get(resource["type"])
        if field is None:
            raise bad_request(f"a {resource['type']} resource has nothing to update")
        secret = check_str(body, field, required=True)
        assert secret is not None
        state.resource_secrets[resource["id"]] = secret
        resource["updated_at"] = self._ids.now()
        return json_response(200, resource)

    async def _h_delete_resource(self, request: web.Request) -> web.Response:
        state, resource = self._resource(request)
        del state.resources[resource["id"]]
        state.resource_secrets.pop(resource["id"], None)
        return json_response(200, {"id": resource["id"], "type": "session_resource_deleted"})

    # ------------------------------------------------------------------ files

    def _file_snapshot(self, file_id: Any) -> dict[str, Any] | None:
        stored = self._files.files.get(file_id) if isinstance(file_id, str) else None
        return copy.deepcopy(stored.meta) if stored is not None else None

    async def _h_upload_file(self, request: web.Request) -> web.Response:
        parts = parse_multipart(request.headers.get("Content-Type", ""), await request.read())
        return json_response(self.dialect.create_status, self._files.upload(parts))

    async def _h_list_files(self, request: web.Request) -> web.Response:
        query = request.query
        wanted = set(query.getall("ids[]", [])) | set(query.getall("ids", []))
        scope_id = query.get("scope_id")

        def keep(meta: dict[str, Any]) -> bool:
            scope = meta.get("scope") or {}
            return (not wanted or meta["id"] in wanted) and (
                not scope_id or scope.get("id") == scope_id
            )

        files = [copy.deepcopy(f.meta) for f in self._files.files.values()]
        page = paginate(files, query, default_order="desc", keep=keep, aliases=True)
        return json_response(200, page)

    async def _h_delete_file(self, request: web.Request) -> web.Response:
        return json_response(200, self._files.delete(request.match_info["id"]))

    async def _h_file_content(self, request: web.Request) -> web.Response:
        stored = self._files.get(request.match_info["id"])
        if not stored.meta["downloadable"]:
            raise ApiError(403, "permission_error", f"file {stored.meta['id']} is not downloadable")
        mode = self.dialect.file_content
        if mode == "negotiate":
            accept = {
                media.split(";", 1)[0].strip().lower()
                for header in request.headers.getall("Accept", [])
                for media in header.split(",")
            }
            mode = "link" if accept == {"application/json"} else "bytes"
        if mode == "link":
            url = f"{self.base_url.removesuffix(BASE_PATH)}{STORAGE_PATH}/files/{stored.meta['id']}"
            return json_response(200, {"url": f"{url}?token={stored.token}", "expires_at": None})
        return self._file_bytes(stored.meta, stored.content)

    @staticmethod
    def _file_bytes(meta: dict[str, Any], content: bytes) -> web.Response:
        name = meta["filename"].replace('"', "").encode("ascii", "replace").decode()
        disposition = f'attachment; filename="{name}"'
        return web.Response(
            body=content,
            content_type=meta["mime_type"],
            headers={"Content-Disposition": disposition},
        )

    async def _h_storage_download(self, request: web.Request) -> web.Response:
        stored = self._files.files.get(request.match_info["id"])
        if stored is None or not hmac.compare_digest(request.query.get("token", ""), stored.token):
            return web.Response(status=403, text="403 forbidden", content_type="text/plain")
        return self._file_bytes(stored.meta, stored.content)
