"""SHELL: QoderClient, the top of the package: configuration, resources, session handles.

The client wires the layers together (transport -> request layer -> resources
-> turn API) and owns what it created. ``with_options`` copies share the
transport and own nothing; session handles are kept only while something uses
them (a weak registry), so a bot with a million chats does not keep a million
handles.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from qoder_async._api.deployments import (
    DeploymentRuns,
    Deployments,
    Dreams,
    EnvironmentsWithWork,
)
from qoder_async._api.resources import Agents, Files, Models, Sessions
from qoder_async._api.vaults import MemoryStores, Skills, Vaults
from qoder_async._core.backoff import ReconnectPolicy, RetryPolicy
from qoder_async._core.errors import ConfigurationError
from qoder_async._shell.eventstream import (
    DEFAULT_MAX_STALLS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
)
from qoder_async._shell.http import HTTP, TokenSource, resolve_base_url, resolve_token
from qoder_async._shell.transport import Timeout, Transport, transport_for
from qoder_async._turn.metrics import metrics_for
from qoder_async._turn.session import SessionHandle
from qoder_async._turn.tracing import tracer_for

__all__ = ["QoderClient"]


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET


class QoderClient:
    """The asyncio client for Qoder Cloud Agents.

    ::

        async with QoderClient() as client:          # token from QODER_PAT
            session = client.session("sess_...")
            turn = await session.send("Help me analyze this code.")
            async for event in turn:                 # this turn's events only
                print(event.type)
            print((await turn.result()).text)

    Arguments:

    * ``token``: else ``QODER_PAT``, else ``QODER_ACCESS_TOKEN``. Or a callable
      (plain or ``async``) returning the current token (a service account's
      short-lived token, a secret from a vault): called before the first
      request, and again when a request or a stream reconnect is answered 401;
      that request is then sent once more with the new token. Requests refused
      with the same token share one call. If the callable raises, the request
      fails with :class:`AuthenticationError` (the server's 401, or, before any
      request, one of ours) whose ``__cause__`` is what it raised; a value that
      is not a non-empty ``str`` is a :class:`ConfigurationError`. Tokens (the
      last 8 it returned) are redacted from every error; none is logged. A
      plain function runs in the event loop: do I/O in an ``async`` one.
    * ``base_url``: else ``QODER_BASE_URL``, else
      ``https://api.qoder.com/api/v1/cloud``; plain ``http://`` only to loopback
      unless ``allow_insecure_http`` (or ``QODER_ALLOW_INSECURE_HTTP=1``).
    * ``http_client``: an ``aiohttp.ClientSession`` or an ``httpx.AsyncClient``
      to borrow (proxies, hooks, your own transport); never closed by us.
      Without one, an aiohttp session of our own.
    * ``timeout``: seconds (or a :class:`Timeout`) for each JSON request attempt;
      streams use their own ``read_timeout``/``stall_timeout``.
    * ``retry``: a :class:`RetryPolicy`, the one retry setting (retries are
      bounded by a deadline, ``timeout``; ``max_retries`` bounds their count
      too, ``RetryPolicy(max_retries=0)`` turns them off); ``reconnect``: a
      :class:`ReconnectPolicy` for streams; ``default_headers``.
    * ``tracer_provider``: an OpenTelemetry ``TracerProvider`` for the turn and
      tool spans (``pip install "qoder-async[otel]"``); without one, the
      application's global provider, if any. Nothing is traced without
      OpenTelemetry installed.
    * ``meter_provider``: an OpenTelemetry ``MeterProvider`` for the client's
      metrics (turn durations, tokens, retries, reconnects...); without one, the
      application's global provider. Nothing is measured without OpenTelemetry
      installed.

    Attributes: ``sessions`` (with ``sessions.events``, ``.threads``,
    ``.resources``), ``agents`` (with ``.versions``), ``environments`` (with
    ``.work``), ``files``, ``models``, ``deployments`` (with ``.runs``),
    ``deployment_runs``, ``dreams``, ``vaults`` (with ``.credentials``), ``skills``
    (with ``.versions``) and ``memory_stores`` (with ``.memories``,
    ``.memory_versions``) mirror the HTTP API (``.with_raw_response`` on
    each gives the HTTP answers); :meth:`session` starts the turn API;
    :meth:`with_options` gives a copy with other retry or timeout settings.
    """

    sessions: Sessions
    """Sessions: create, retrieve, update, list, cancel, archive, delete; ``.events``,
    ``.threads``, ``.resources``."""
    agents: Agents
    """Agents: create, retrieve, update, list, archive; ``.versions``."""
    environments: EnvironmentsWithWork
    """Environments: create, retrieve, update, list, archive, delete; ``.work`` (a self-hosted
    environment's queue)."""
    files: Files
    """Files: upload, retrieve_metadata, list, download, delete."""
    models: Models
    """Models: list."""
    deployments: Deployments
    """Deployments: create, retrieve, update, list, archive, pause, unpause, run; ``.runs``."""
    deployment_runs: DeploymentRuns
    """Deployment runs: retrieve, list."""
    dreams: Dreams
    """Dreams: create, retrieve, list, archive, cancel."""
    vaults: Vaults
    """Vaults: create, retrieve, list, delete, archive; ``.credentials``."""
    skills: Skills
    """Skills: create, retrieve, list, delete; ``.versions``."""
    memory_stores: MemoryStores
    """Memory stores: create, retrieve, update, list, delete, archive; ``.memories``,
    ``.memory_versions``."""

    def __init__(
        self,
        token: TokenSource | None = None,
        base_url: str | None = None,
        *,
        http_client: Any = None,
        timeout: float | Timeout | None = None,
        retry: RetryPolicy | None = None,
        reconnect: ReconnectPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        allow_insecure_http: bool | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        policy = retry or RetryPolicy()
        self._http = HTTP(
            token=resolve_token(token),
            base_url=resolve_base_url(base_url, allow_insecure_http),
            transport=transport_for(http_client),
            timeout=timeout,
            retry=policy,
            default_headers=default_headers,
        )
        self._reconnect = reconnect or ReconnectPolicy()
        self._http.observer = self._metrics = metrics_for(meter_provider)
        self._tracing = tracer_for(tracer_provider, self._metrics)
        self._setup()

    def _setup(self) -> None:
        self._handles: weakref.WeakValueDictionary[str, SessionHandle] = (
            weakref.WeakValueDictionary()
        )
        self.sessions = Sessions(self._http, self._reconnect)
        self.agents = Agents(self._http)
        self.environments = EnvironmentsWithWork(self._http)
        self.files = Files(self._http)
        self.models = Models(self._http)
        self.deployments = Deployments(self._http)
        self.deployment_runs = DeploymentRuns(self._http)
        self.dreams = Dreams(self._http)
        self.vaults = Vaults(self._http)
        self.skills = Skills(self._http)
        self.memory_stores = MemoryStores(self._http)

    def __repr__(self) -> str:
        return f"QoderClient(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API's base URL (``.../api/v1/cloud``)."""
        return self._http.base_url

    @property
    def reconnect_policy(self) -> ReconnectPolicy:
        """How this client's streams reconnect (new streams and session handles use it)."""
        return self._reconnect

    @reconnect_policy.setter
    def reconnect_policy(self, policy: ReconnectPolicy) -> None:
        self._reconnect = policy
        self.sessions.events._reconnect = policy
        self.sessions.threads.events._reconnect = policy

    @property
    def retry_policy(self) -> RetryPolicy:
        """How this client retries requests."""
        return self._http.retry

    @property
    def timeout(self) -> Timeout:
        """The timeouts of JSON requests."""
        return self._http.timeout

    def _tap_transport(self, wrap: Callable[[Transport], Transport]) -> Callable[[], None]:
        """Not public API: the hook ``qoder_async.testing.record`` uses (duck-typed).

        Every request of this client and its ``with_options`` copies goes through
        ``wrap(transport)`` until the returned function is called (see
        ``HTTP.tap``). The transport protocol is ``_shell.transport.Transport``:
        ``request``, ``open``, ``stream``, ``connection_error``, ``aclose`` and
        ``errors``.
        """
        return self._http.tap(wrap)

    # -- lifecycle

    async def __aenter__(self) -> QoderClient:
        if self._http.closed:
            self._http.check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once the client (or, for a copy, the client it copies) was closed."""
        return self._http.closed

    async def aclose(self) -> None:
        """Close every session connection this client opened, then its own HTTP session.

        A borrowed ``http_client`` is left open; a :meth:`with_options` copy closes
        only the session connections it opened. Idempotent.
        """
        for handle in list(self._handles.values()):
            await handle.aclose()
        self._handles.clear()
        await self._http.aclose()

    def with_options(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | Timeout | None = None,
    ) -> QoderClient:
        """A client sharing this one's connections, with other retry or timeout settings.

        ``await client.with_options(retry=RetryPolicy(max_retries=5)).sessions.retrieve(id)``.
        Closing the copy (or leaving ``async with``) does not close the shared
        connections.
        """
        policy = retry or self._http.retry
        twin = object.__new__(QoderClient)
        twin._http = self._http.copy(retry=policy, timeout=timeout)
        twin._reconnect = self._reconnect
        twin._tracing = self._tracing
        twin._metrics = self._metrics
        twin._setup()
        return twin

    # -- the turn API

    def session(
        self,
        session_id: str,
        *,
        event_deltas: Iterable[str] | Literal[_Unset.UNSET] = _UNSET,
        read_timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        stall_timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        max_stalls: int | Literal[_Unset.UNSET] = _UNSET,
        queue_size: int | Literal[_Unset.UNSET] = _UNSET,
        listener_timeout: float | Literal[_Unset.UNSET] = _UNSET,
    ) -> SessionHandle:
        """A handle on a session for the turn API (no I/O until you send or listen).

        One handle (and one SSE connection) per session id and client while it
        is in use: asking again returns the same handle. Asking again with
        different options raises :class:`ConfigurationError` (options not given
        are not compared). ``event_deltas`` selects the live previews its
        connection asks for (default ``("agent.message",)``: a reader asks for
        the previews it shows, and ``text_stream()`` shows them; a session
        created with ``incremental_streaming_enabled`` needs none, its
        incremental events come anyway); ``read_timeout`` (default 90 s, as for
        ``events.stream()``) bounds the wait for any byte, heartbeats included,
        before the connection is dropped and resumed; ``stall_timeout`` (default 120 s) and
        ``max_stalls`` (default 5) are the connection's stall rules: a running
        turn may be silent ``stall_timeout * max_stalls`` seconds (10 minutes)
        before it fails with :class:`StreamStalledError`; ``queue_size`` (1024)
        bounds each ``listen()`` queue, and a reader whose queue stays full
        ``listener_timeout`` seconds (30) is detached with
        :class:`ListenerOverflowError` (the session's turns and other listeners
        go on).
        """
        self._http.check_open()
        given: dict[str, Any] = {
            "event_deltas": event_deltas if event_deltas is _UNSET else tuple(event_deltas),
            "read_timeout": read_timeout,
            "stall_timeout": stall_timeout,
            "max_stalls": max_stalls,
            "queue_size": queue_size,
            "listener_timeout": listener_timeout,
        }
        given = {k: v for k, v in given.items() if v is not _UNSET}
        handle = self._handles.get(session_id)
        if handle is not None:
            changed = sorted(k for k, v in given.items() if handle.options[k] != v)
            if changed:
                raise ConfigurationError(
                    f"client.session({session_id!r}) already exists with other options "
                    f"({', '.join(changed)}); a session has one handle per client: "
                    "pass the same options, or use client.with_options() for another client"
                )
            return handle
        options: dict[str, Any] = {
            "event_deltas": ("agent.message",),
            "read_timeout": DEFAULT_READ_TIMEOUT,
            "stall_timeout": DEFAULT_STALL_TIMEOUT,
            "max_stalls": DEFAULT_MAX_STALLS,
            "queue_size": 1024,
            "listener_timeout": 30.0,
            **given,
        }
        handle = SessionHandle(
            self._http,
            self.sessions,
            session_id,
            reconnect=self._reconnect,
            tracing=self._tracing,
            **options,
        )
        self._handles[session_id] = handle
        return handle
