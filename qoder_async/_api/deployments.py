"""SHELL: deployments and their runs, dreams, and a self-hosted environment's work queue.

``client.deployments`` (with ``.runs``, one deployment's runs),
``client.deployment_runs``, ``client.dreams`` and ``client.environments.work``,
under the official SDK's names. Endpoints and shapes: ``qoder-api.md`` §15 (the
official SDK's captured answers; its types where a capture is empty). They work
as every resource of :mod:`qoder_async._api.resources` does
(``deployments.runs.retrieve(deployment_id, run_id)``).

A run answers a :class:`DeploymentRun` naming the session it started; its
turn is followed with ``await client.session(run.session_id).follow()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Unpack

from qoder_async._api.resources import (
    CallOptions,
    Environments,
    _events,
    _list_of,
    _put,
    _Resource,
)
from qoder_async._core.convert import (
    structure_deployment,
    structure_deployment_run,
    structure_dream,
    structure_work,
    structure_work_heartbeat,
    structure_work_queue_stats,
)
from qoder_async._core.errors import ConfigurationError
from qoder_async._core.models import (
    Deployment,
    DeploymentRun,
    Dream,
    OutboundEvent,
    Work,
    WorkHeartbeat,
    WorkQueueStats,
)
from qoder_async._core.params import (
    BudgetLimitParam,
    DreamInputParams,
    DreamModelParams,
    OutputBehaviorParams,
    ScheduleParams,
    SessionResourceParams,
)
from qoder_async._shell.http import HTTP
from qoder_async._shell.pagination import AsyncPaginator, list_params
from qoder_async._shell.transport import Timeout

__all__ = [
    "DeploymentRuns",
    "DeploymentScopedRuns",
    "Deployments",
    "Dreams",
    "EnvironmentWork",
    "EnvironmentsWithWork",
    "env_lines",
]

AgentRef = str | Mapping[str, Any]
InitialEvents = Sequence[OutboundEvent | Mapping[str, Any]]


def env_lines(value: str | Mapping[str, str] | None) -> str | None:
    """A deployment's ``environment_variables`` as the API takes them: ``"K=V"`` lines.

    A string is sent as it is; a mapping becomes one ``K=V`` line per variable.
    A name that is empty or holds ``=`` or a line break, or a value holding a line
    break, is a :class:`ConfigurationError` (it would change the other lines).
    """
    if value is None or isinstance(value, str):
        return value
    lines = []
    for key, val in value.items():
        if not isinstance(key, str) or not key or any(c in key for c in "=\r\n"):
            raise ConfigurationError(f"invalid environment variable name {key!r}")
        if not isinstance(val, str) or any(c in val for c in "\r\n"):
            raise ConfigurationError(f"the value of {key} must be a string on one line")
        lines.append(f"{key}={val}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- deployments


class DeploymentScopedRuns(_Resource):
    """``client.deployments.runs``: one deployment's runs."""

    _base = "/deployments/{}/runs"

    def list(
        self,
        deployment_id: str,
        *,
        limit: int | None = None,
        triggered_after: str | None = None,
        triggered_before: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[DeploymentRun]:
        """Iterate a deployment's runs (``GET /deployments/{id}/runs``), newest first."""
        params = list_params(
            limit=limit, triggered_after=triggered_after, triggered_before=triggered_before
        )
        return self._list(self._path(deployment_id), params, structure_deployment_run, options)

    async def retrieve(
        self, deployment_id: str, run_id: str, **options: Unpack[CallOptions]
    ) -> DeploymentRun:
        """Fetch one of its runs (``GET /deployments/{id}/runs/{run_id}``)."""
        path = self._path(deployment_id, run_id)
        return await self._call("GET", path, structure_deployment_run, options)


class Deployments(_Resource):
    """``client.deployments``: create, retrieve, update, list, archive, pause, unpause, run;
    ``runs`` (one deployment's runs)."""

    _base = "/deployments"

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.runs = DeploymentScopedRuns(http)

    async def create(
        self,
        *,
        name: str,
        agent: AgentRef,
        environment_id: str,
        initial_events: InitialEvents,
        description: str | None = None,
        environment_variables: str | Mapping[str, str] | None = None,
        schedule: ScheduleParams | Mapping[str, Any] | None = None,
        resources: Sequence[SessionResourceParams | Mapping[str, Any]] | None = None,
        vault_ids: Sequence[str] | None = None,
        budget: BudgetLimitParam | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deployment:
        """Create a deployment (``POST /deployments``).

        ``agent``: an agent id or ``{"type": "agent", "id", "version"}``;
        ``initial_events``: what each run's session starts with
        (:class:`UserMessage`... or JSON objects); ``schedule``: ``{"type":
        "cron", "expression", "timezone"}`` (without one, it runs only when
        asked); ``environment_variables``: ``"K=V"`` lines or a mapping (see
        :func:`env_lines`).
        """
        body = _put(
            {
                "name": name,
                "agent": agent,
                "environment_id": environment_id,
                "initial_events": _events(initial_events),
            },
            description=description,
            environment_variables=env_lines(environment_variables),
            schedule=schedule,
            resources=_list_of(resources),
            vault_ids=_list_of(vault_ids),
            budget=budget,
            metadata=metadata,
        )
        return await self._call(
            "POST", self._path(), structure_deployment, options, idempotency_key, json=body
        )

    async def retrieve(self, deployment_id: str, **options: Unpack[CallOptions]) -> Deployment:
        """Fetch a deployment (``GET /deployments/{id}``)."""
        return await self._call("GET", self._path(deployment_id), structure_deployment, options)

    async def update(
        self,
        deployment_id: str,
        *,
        name: str | None = None,
        agent: AgentRef | None = None,
        environment_id: str | None = None,
        initial_events: InitialEvents | None = None,
        description: str | None = None,
        environment_variables: str | Mapping[str, str] | None = None,
        schedule: ScheduleParams | Mapping[str, Any] | None = None,
        resources: Sequence[SessionResourceParams | Mapping[str, Any]] | None = None,
        vault_ids: Sequence[str] | None = None,
        budget: BudgetLimitParam | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deployment:
        """Update a deployment (``POST /deployments/{id}``): only the fields given."""
        body = _put(
            {},
            name=name,
            agent=agent,
            environment_id=environment_id,
            initial_events=_events(initial_events),
            description=description,
            environment_variables=env_lines(environment_variables),
            schedule=schedule,
            resources=_list_of(resources),
            vault_ids=_list_of(vault_ids),
            budget=budget,
            metadata=metadata,
        )
        path = self._path(deployment_id)
        return await self._call(
            "POST", path, structure_deployment, options, idempotency_key, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        agent_id: str | None = None,
        status: Literal["active", "paused"] | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Deployment]:
        """Iterate deployments (``GET /deployments``), newest first."""
        params = list_params(
            limit=limit, agent_id=agent_id, status=status, include_archived=include_archived
        )
        return self._list(self._path(), params, structure_deployment, options)

    async def archive(
        self,
        deployment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deployment:
        """Archive a deployment (``POST /deployments/{id}/archive``): no more runs."""
        path = self._path(deployment_id, action="archive")
        return await self._call("POST", path, structure_deployment, options, idempotency_key)

    async def pause(
        self,
        deployment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deployment:
        """Pause a deployment's schedule (``POST /deployments/{id}/pause``)."""
        path = self._path(deployment_id, action="pause")
        return await self._call("POST", path, structure_deployment, options, idempotency_key)

    async def unpause(
        self,
        deployment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deployment:
        """Resume a paused deployment (``POST /deployments/{id}/unpause``)."""
        path = self._path(deployment_id, action="unpause")
        return await self._call("POST", path, structure_deployment, options, idempotency_key)

    async def run(
        self,
        deployment_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> DeploymentRun:
        """Run a deployment now (``POST /deployments/{id}/run``): a new session with its
        initial events. Follow that turn with
        ``await client.session(run.session_id).follow()``."""
        path = self._path(deployment_id, action="run")
        return await self._call("POST", path, structure_deployment_run, options, idempotency_key)


class DeploymentRuns(_Resource):
    """``client.deployment_runs``: every deployment's runs."""

    _base = "/deployment_runs"

    async def retrieve(
        self, deployment_run_id: str, **options: Unpack[CallOptions]
    ) -> DeploymentRun:
        """Fetch a run (``GET /deployment_runs/{id}``)."""
        path = self._path(deployment_run_id)
        return await self._call("GET", path, structure_deployment_run, options)

    def list(
        self,
        *,
        limit: int | None = None,
        deployment_id: str | None = None,
        trigger_type: Literal["schedule", "manual"] | None = None,
        has_error: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[DeploymentRun]:
        """Iterate runs (``GET /deployment_runs``), newest first; filters as the API's."""
        params = list_params(
            limit=limit, deployment_id=deployment_id, trigger_type=trigger_type, has_error=has_error
        )
        return self._list(self._path(), params, structure_deployment_run, options)


# --------------------------------------------------------------------------- dreams


class Dreams(_Resource):
    """``client.dreams``: create, retrieve, list, archive, cancel."""

    _base = "/dreams"

    async def create(
        self,
        *,
        inputs: Sequence[DreamInputParams | Mapping[str, Any]],
        model: str | DreamModelParams | Mapping[str, Any],
        instructions: str | None = None,
        output_behavior: OutputBehaviorParams | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Dream:
        """Start a dream (``POST /dreams``).

        ``inputs``: ``{"type": "memory_store", "memory_store_id"}`` and/or
        ``{"type": "sessions", "session_ids": [...]}``; ``model``: a model id or
        ``{"id", "speed"}``; ``output_behavior``: ``{"type": "create_new"}`` or
        ``{"type": "update_existing", "memory_store_id"}``.
        """
        body = _put(
            {"inputs": _list_of(inputs), "model": model},
            instructions=instructions,
            output_behavior=output_behavior,
        )
        return await self._call(
            "POST", self._path(), structure_dream, options, idempotency_key, json=body
        )

    async def retrieve(self, dream_id: str, **options: Unpack[CallOptions]) -> Dream:
        """Fetch a dream (``GET /dreams/{id}``)."""
        return await self._call("GET", self._path(dream_id), structure_dream, options)

    def list(
        self,
        *,
        limit: int | None = None,
        statuses: Sequence[str] | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Dream]:
        """Iterate dreams (``GET /dreams``), newest first; ``statuses`` filters."""
        params = list_params(limit=limit, statuses=statuses, include_archived=include_archived)
        return self._list(self._path(), params, structure_dream, options)

    async def archive(
        self, dream_id: str, *, idempotency_key: str | None = None, **options: Unpack[CallOptions]
    ) -> Dream:
        """Archive a dream (``POST /dreams/{id}/archive``)."""
        path = self._path(dream_id, action="archive")
        return await self._call("POST", path, structure_dream, options, idempotency_key)

    async def cancel(
        self, dream_id: str, *, idempotency_key: str | None = None, **options: Unpack[CallOptions]
    ) -> Dream:
        """Cancel a pending or running dream (``POST /dreams/{id}/cancel``)."""
        path = self._path(dream_id, action="cancel")
        return await self._call("POST", path, structure_dream, options, idempotency_key)


# --------------------------------------------------------------------------- environment work


class EnvironmentWork(_Resource):
    """``client.environments.work``: the queue a self-hosted environment's worker polls.

    ``poll`` hands out the next work item (``None`` when none came within
    ``block_ms``), ``ack`` takes it (queued -> starting), ``heartbeat`` keeps
    its lease, ``stop`` ends it; ``retrieve``, ``update`` (metadata, merged),
    ``list`` and ``stats`` inspect the queue.
    """

    _base = "/environments/{}/work"

    async def poll(
        self,
        environment_id: str,
        *,
        block_ms: int | None = None,
        reclaim_older_than_ms: int | None = None,
        worker_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Work | None:
        """Long-poll for the next work item (``GET /environments/{id}/work/poll``).

        ``block_ms``: how long the server may hold the request; ``worker_id``
        is sent as ``Worker-ID`` (printable text, else :class:`ConfigurationError`);
        ``reclaim_older_than_ms`` also hands out items polled that long ago and
        never acknowledged. ``None``: no work.
        """
        if worker_id is not None:
            if not isinstance(worker_id, str) or not worker_id.isprintable() or not worker_id:
                raise ConfigurationError(f"worker_id must be printable text, got {worker_id!r}")
            headers = {**options.get("extra_headers", {}), "Worker-ID": worker_id}
            options = {**options, "extra_headers": headers}
        base = self._http.timeout
        if block_ms is not None and "timeout" not in options and base.total is not None:
            # The server may hold the request block_ms: the attempt may last that much longer.
            options = {
                **options,
                "timeout": Timeout(total=base.total + block_ms / 1000, connect=base.connect),
            }
        params = list_params(block_ms=block_ms, reclaim_older_than_ms=reclaim_older_than_ms)

        def item(body: Any) -> Work | None:
            return None if body is None else structure_work(body)

        path = self._path(environment_id, action="poll")
        return await self._call("GET", path, item, options, params=params)

    async def ack(
        self,
        environment_id: str,
        work_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Work:
        """Take a polled item (``POST .../work/{work_id}/ack``): queued -> starting."""
        path = self._path(environment_id, work_id, action="ack")
        return await self._call("POST", path, structure_work, options, idempotency_key)

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        *,
        desired_ttl_seconds: int | None = None,
        expected_last_heartbeat: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> WorkHeartbeat:
        """Extend an item's lease (``POST .../work/{work_id}/heartbeat``).

        ``expected_last_heartbeat``: the ``last_heartbeat`` of the previous
        answer; when another worker heartbeat since, the lease is not extended.
        """
        params = list_params(
            desired_ttl_seconds=desired_ttl_seconds,
            expected_last_heartbeat=expected_last_heartbeat,
        )
        path = self._path(environment_id, work_id, action="heartbeat")
        return await self._call(
            "POST", path, structure_work_heartbeat, options, idempotency_key, params=params
        )

    async def stop(
        self,
        environment_id: str,
        work_id: str,
        *,
        force: bool | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Work:
        """Stop an item (``POST .../work/{work_id}/stop``), gracefully unless ``force``."""
        path = self._path(environment_id, work_id, action="stop")
        body = _put({}, force=force)
        return await self._call("POST", path, structure_work, options, idempotency_key, json=body)

    async def retrieve(
        self, environment_id: str, work_id: str, **options: Unpack[CallOptions]
    ) -> Work:
        """Fetch a work item (``GET /environments/{id}/work/{work_id}``)."""
        return await self._call("GET", self._path(environment_id, work_id), structure_work, options)

    async def update(
        self,
        environment_id: str,
        work_id: str,
        *,
        metadata: Mapping[str, str],
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Work:
        """Merge ``metadata`` into a work item's (``POST .../work/{work_id}``)."""
        path = self._path(environment_id, work_id)
        body = {"metadata": dict(metadata)}
        return await self._call("POST", path, structure_work, options, idempotency_key, json=body)

    def list(
        self, environment_id: str, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[Work]:
        """Iterate an environment's work items (``GET /environments/{id}/work``)."""
        params = list_params(limit=limit)
        return self._list(self._path(environment_id), params, structure_work, options)

    async def stats(self, environment_id: str, **options: Unpack[CallOptions]) -> WorkQueueStats:
        """The queue's statistics (``GET /environments/{id}/work/stats``)."""
        path = self._path(environment_id, action="stats")
        return await self._call("GET", path, structure_work_queue_stats, options)


class EnvironmentsWithWork(Environments):
    """``client.environments``: create, retrieve, update, list, archive, delete; ``work``."""

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.work = EnvironmentWork(http)
