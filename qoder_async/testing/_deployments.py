"""The fake's deployments (and their runs), dreams and self-hosted work queues.

Shapes are the official SDK's captured answers (``qoder-api.md`` §15). Served
under the same middleware as every route (auth, faults, idempotency keys):

=======================================  ===============================================
request                                  what the fake does
=======================================  ===============================================
``POST /deployments``                    checks the agent (id or ``{"type": "agent",
                                         "id", "version"}``, pinned to its latest
                                         version when none is given), the environment,
                                         ``initial_events`` (one ``user.message`` or
                                         ``user.define_outcome``: what a session takes),
                                         ``environment_variables`` (``"K=V"`` lines),
                                         a ``cron`` schedule; ``upcoming_runs_at`` stays
                                         empty (the fake schedules nothing)
``POST /deployments/{id}/pause``         ``status: paused``, ``paused_reason: manual``;
``.../unpause`` back to active           ``archive`` sets ``archived_at`` (an archived
                                         deployment cannot be run, updated or paused)
``POST /deployments/{id}/run``           a session from the deployment (its initial
                                         events start a turn) and a ``deployment_run``
                                         naming it; a session the fake refuses becomes
                                         a run with ``error`` and no ``session_id``
``POST /dreams``                         a ``pending`` dream; ``cancel`` a pending or
                                         running one (else 409), ``archive``
``GET /environments/{id}/work/poll``     the oldest queued item not handed out (or
                                         handed out more than ``reclaim_older_than_ms``
                                         ago), waiting up to ``block_ms`` (at most
                                         30 s) for one; ``null`` when none came
``ack`` / ``heartbeat`` / ``stop``       queued -> starting -> active -> stopping; a
                                         heartbeat whose ``expected_last_heartbeat`` is
                                         not the last one does not extend the lease
=======================================  ===============================================

Work items are queued when a session is created in a ``self_hosted``
environment, or by :meth:`DeploymentStore.add_work`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ._params import (
    agent_ref,
    bool_param,
    check_env_vars,
    check_list,
    check_metadata,
    check_object,
    check_resource,
    check_str,
    check_str_list,
    int_param,
    lister,
    paginate,
    path_id,
    read_body,
    show,
    validate_input_event,
)
from ._wire import ApiError, Ids, bad_request, conflict, find, json_response, not_found

__all__ = ["DeploymentStore"]

_TURN_STARTERS = ("user.message", "user.define_outcome")
_DREAM_STATUSES = ("pending", "running", "completed", "failed", "canceled")
_MAX_BLOCK_MS = 30_000
_LEASE_SECONDS = 60


class DeploymentStore:
    """The state and handlers of deployments, runs, dreams and work queues of one fake.

    ``create_session`` creates a session from a ``POST /sessions`` body;
    ``agent`` (by id and version, ``None``: the latest) and ``environment``
    look one up (raising the 404); ``session_exists``
    answers whether a session id is known; ``create_status`` is the dialect's
    status of a create.
    """

    def __init__(
        self,
        ids: Ids,
        *,
        create_session: Callable[[Mapping[str, Any]], dict[str, Any]],
        agent: Callable[[str, int | None], dict[str, Any]],
        environment: Callable[[str], dict[str, Any]],
        session_exists: Callable[[str], bool],
        create_status: Callable[[], int],
    ) -> None:
        self._ids = ids
        self._create_session = create_session
        self._agent = agent
        self._environment = environment
        self._session_exists = session_exists
        self._create_status = create_status
        self.deployments: dict[str, dict[str, Any]] = {}
        # Each deployment's resources as given (repository secrets are write-only).
        self._resource_inputs: dict[str, list[Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.dreams: dict[str, dict[str, Any]] = {}
        self.work: dict[str, dict[str, Any]] = {}
        self._handed_out: dict[str, float] = {}  # work id -> loop time it was polled
        self._pollers: dict[str, int] = {}  # environment id -> workers polling now
        self._work_added = asyncio.Event()

    def add_routes(self, app: web.Application, base: str) -> None:
        """Register every route under ``base`` (``/api/v1/cloud``)."""
        r = app.router
        dep = f"{base}/deployments/{{id}}"
        r.add_post(f"{base}/deployments", self._h_create_deployment)
        r.add_get(f"{base}/deployments", self._h_list_deployments)
        r.add_get(dep, show(path_id(self._deployment)))
        r.add_post(dep, self._h_update_deployment)
        for action in ("archive", "pause", "unpause"):
            r.add_post(f"{dep}/{action}", self._h_deployment_action)
        r.add_post(f"{dep}/run", self._h_run_deployment)
        r.add_get(f"{dep}/runs", self._h_list_runs)
        r.add_get(f"{dep}/runs/{{rid}}", self._h_get_run)
        r.add_get(f"{base}/deployment_runs", self._h_list_runs)
        r.add_get(f"{base}/deployment_runs/{{rid}}", self._h_get_run)
        r.add_post(f"{base}/dreams", self._h_create_dream)
        r.add_get(f"{base}/dreams", self._h_list_dreams)
        r.add_get(f"{base}/dreams/{{id}}", show(path_id(self._dream)))
        r.add_post(f"{base}/dreams/{{id}}/archive", self._h_dream_action)
        r.add_post(f"{base}/dreams/{{id}}/cancel", self._h_dream_action)
        work = f"{base}/environments/{{id}}/work"
        r.add_get(work, lister(path_id(self._env_work), order="asc"))
        r.add_get(f"{work}/poll", self._h_poll_work)
        r.add_get(f"{work}/stats", self._h_work_stats)
        r.add_get(f"{work}/{{wid}}", show(self._work))
        r.add_post(f"{work}/{{wid}}", self._h_update_work)
        for action in ("ack", "heartbeat", "stop"):
            r.add_post(f"{work}/{{wid}}/{action}", self._h_work_action)

    # ------------------------------------------------------------------ deployments

    def _deployment(self, dep_id: str) -> dict[str, Any]:
        return find(self.deployments, dep_id, "deployment")

    @staticmethod
    def _initial_events(body: Mapping[str, Any]) -> list[dict[str, Any]]:
        events = check_list(body, "initial_events")
        if not events:
            raise bad_request("initial_events must be a non-empty array", "initial_events")
        checked = [validate_input_event(i, ev) for i, ev in enumerate(events)]
        if len(checked) > 1 or checked[0]["type"] not in _TURN_STARTERS:
            raise bad_request(
                "initial_events must be one user.message or user.define_outcome",
                "initial_events",
            )
        return checked

    @staticmethod
    def _schedule(body: Mapping[str, Any]) -> dict[str, Any] | None:
        value = check_object(body, "schedule")
        if value is None:
            return None
        if value.get("type") != "cron":
            raise bad_request("schedule.type must be 'cron'", "schedule")
        expression = check_str(value, "expression", required=True, within="schedule")
        timezone = check_str(value, "timezone", required=True, within="schedule")
        if len(str(expression).split()) != 5:
            raise bad_request("schedule.expression must have 5 fields", "schedule.expression")
        return {
            "expression": expression,
            "timezone": timezone,
            "type": "cron",
            "upcoming_runs_at": [],
        }

    @staticmethod
    def _env_lines(body: Mapping[str, Any]) -> str | None:
        if body.get("environment_variables") is None:
            return None
        if not isinstance(body["environment_variables"], str):
            raise bad_request(
                "environment_variables must be a string of KEY=VALUE lines",
                "environment_variables",
            )
        check_env_vars(body)  # the lines parse
        return str(body["environment_variables"])

    def _deployment_fields(
        self, body: Mapping[str, Any], *, create: bool
    ) -> tuple[dict[str, Any], list[Any] | None]:
        """The fields to set, and the resources as given (with their write-only secrets)."""
        out: dict[str, Any] = {}
        given: list[Any] | None = None
        if create or "name" in body:
            out["name"] = check_str(body, "name", required=True)
        if create or "agent" in body:
            agent = self._agent(*agent_ref(body.get("agent")))
            out["agent"] = {"id": agent["id"], "type": "agent", "version": agent["version"]}
        if create or "environment_id" in body:
            env_id = check_str(body, "environment_id", required=True)
            out["environment_id"] = self._environment(str(env_id))["id"]
        if create or "initial_events" in body:
            out["initial_events"] = self._initial_events(body)
        if "description" in body or create:
            out["description"] = check_str(body, "description") or ""
        if "environment_variables" in body or create:
            out["environment_variables"] = self._env_lines(body) or ""
        if "schedule" in body:
            out["schedule"] = self._schedule(body)
        if "resources" in body or create:
            given = check_list(body, "resources") or []
            checked = [check_resource(v, f"resources[{i}]") for i, v in enumerate(given)]
            out["resources"] = [public for public, _secret in checked]
        if "vault_ids" in body or create:
            out["vault_ids"] = check_str_list(body, "vault_ids") or []
        if "metadata" in body or create:
            out["metadata"] = check_metadata(body) or {}
        if "budget" in body:
            out["budget"] = check_object(body, "budget")
        return out, given

    async def _h_create_deployment(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        fields, given = self._deployment_fields(body, create=True)
        extra = {"schedule": fields.get("schedule"), "status": "active", "paused_reason": None}
        dep = self._ids.stamped("dep", "deployment", {**fields, **extra})
        self.deployments[dep["id"]] = dep
        self._resource_inputs[dep["id"]] = given or []
        return json_response(self._create_status(), dep)

    async def _h_list_deployments(self, request: web.Request) -> web.Response:
        query = request.query
        agent_id, status = query.get("agent_id"), query.get("status")
        if status is not None and status not in ("active", "paused"):
            raise bad_request("status must be active or paused", "status")

        def keep(dep: dict[str, Any]) -> bool:
            return (agent_id is None or dep["agent"]["id"] == agent_id) and (
                status is None or dep["status"] == status
            )

        deployments = list(self.deployments.values())
        page = paginate(deployments, query, default_order="desc", keep=keep, archivable=True)
        return json_response(200, page)

    def _live(self, dep_id: str) -> dict[str, Any]:
        dep = self._deployment(dep_id)
        if dep["archived_at"] is not None:
            raise bad_request("deployment is archived", "deployment_id")
        return dep

    async def _h_update_deployment(self, request: web.Request) -> web.Response:
        dep = self._live(request.match_info["id"])
        fields, given = self._deployment_fields(await read_body(request), create=False)
        dep.update(fields)
        if given is not None:
            self._resource_inputs[dep["id"]] = given
        dep["updated_at"] = self._ids.now()
        return json_response(200, dep)

    async def _h_deployment_action(self, request: web.Request) -> web.Response:
        action = request.path.rsplit("/", 1)[1]
        dep = self._deployment(request.match_info["id"])
        if action == "archive":
            if dep["archived_at"] is None:
                dep["archived_at"] = dep["updated_at"] = self._ids.now()
                if dep["schedule"] is not None:
                    dep["schedule"]["upcoming_runs_at"] = []
            return json_response(200, dep)
        self._live(dep["id"])
        if action == "pause":
            dep.update(status="paused", paused_reason={"type": "manual"})
        else:
            dep.update(status="active", paused_reason=None)
        dep["updated_at"] = self._ids.now()
        return json_response(200, dep)

    async def _h_run_deployment(self, request: web.Request) -> web.Response:
        dep = self._live(request.match_info["id"])
        now = self._ids.now()
        run: dict[str, Any] = {
            "id": self._ids.resource("drun"),
            "type": "deployment_run",
            "deployment_id": dep["id"],
            "session_id": None,
            "agent": copy.deepcopy(dep["agent"]),
            "trigger_context": {"type": "manual"},
            "error": None,
            "created_at": now,
        }
        session_body: dict[str, Any] = {
            "agent": dep["agent"],
            "environment_id": dep["environment_id"],
            "initial_events": copy.deepcopy(dep["initial_events"]),
            "environment_variables": dep["environment_variables"],
            "resources": copy.deepcopy(self._resource_inputs.get(dep["id"], [])),
            "vault_ids": dep["vault_ids"],
            "metadata": dep["metadata"],
        }
        if dep.get("budget") is not None:
            session_body["budget"] = dep["budget"]
        try:
            run["session_id"] = self._create_session(session_body)["id"]
        except ApiError as exc:
            run["error"] = {"type": "session_creation_rejected", "message": exc.message}
        if dep["schedule"] is not None:
            dep["schedule"]["last_run_at"] = now
        self.runs[run["id"]] = run
        return json_response(self._create_status(), run)

    async def _h_list_runs(self, request: web.Request) -> web.Response:
        query = request.query
        dep_id = request.match_info.get("id") or query.get("deployment_id")
        if request.match_info.get("id"):
            self._deployment(dep_id or "")
        trigger, has_error = query.get("trigger_type"), query.get("has_error")
        if trigger is not None and trigger not in ("manual", "schedule"):
            raise bad_request("trigger_type must be manual or schedule", "trigger_type")
        errors = None if has_error is None else bool_param(query, "has_error")

        def keep(run: dict[str, Any]) -> bool:
            return (
                (dep_id is None or run["deployment_id"] == dep_id)
                and (trigger is None or run["trigger_context"]["type"] == trigger)
                and (errors is None or (run["error"] is not None) == errors)
            )

        page = paginate(list(self.runs.values()), query, default_order="desc", keep=keep)
        return json_response(200, page)

    async def _h_get_run(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["rid"])
        dep_id = request.match_info.get("id")
        if run is None or (dep_id is not None and run["deployment_id"] != dep_id):
            raise not_found("deployment run", request.match_info["rid"])
        return json_response(200, run)

    # ------------------------------------------------------------------ dreams

    def _dream(self, dream_id: str) -> dict[str, Any]:
        return find(self.dreams, dream_id, "dream")

    def _dream_input(self, i: int, value: Any) -> dict[str, Any]:
        param = f"inputs[{i}]"
        if not isinstance(value, dict):
            raise bad_request(f"{param} must be an object", param)
        if value.get("type") == "memory_store":
            store = check_str(value, "memory_store_id", required=True, within=param)
            return {"type": "memory_store", "memory_store_id": store}
        if value.get("type") == "sessions":
            ids = check_str_list(value, "session_ids")
            if not ids:
                raise bad_request(f"{param}.session_ids must be a non-empty array", param)
            for sid in ids:
                if not self._session_exists(sid):
                    raise not_found("session", sid)
            return {"type": "sessions", "session_ids": ids}
        raise bad_request(f"{param}.type must be 'memory_store' or 'sessions'", param)

    async def _h_create_dream(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        inputs = check_list(body, "inputs")
        if not inputs:
            raise bad_request("inputs must be a non-empty array", "inputs")
        model = body.get("model")
        if isinstance(model, str) and model:
            model = {"id": model}
        if not isinstance(model, dict) or not isinstance(model.get("id"), str) or not model["id"]:
            raise bad_request("model must be a model id or an object with an id", "model")
        if model.get("speed") not in (None, "standard", "fast"):
            raise bad_request("model.speed must be standard or fast", "model.speed")
        behavior = check_object(body, "output_behavior")
        if behavior is not None and behavior.get("type") not in ("create_new", "update_existing"):
            raise bad_request("output_behavior.type is unknown", "output_behavior")
        dream: dict[str, Any] = {
            "id": self._ids.resource("drm"),
            "type": "dream",
            "status": "pending",
            "inputs": [self._dream_input(i, v) for i, v in enumerate(inputs)],
            "outputs": [],
            "model": dict(model),
            "instructions": check_str(body, "instructions") or "",
            "session_id": None,
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            "error": None,
            "created_at": self._ids.now(),
            "ended_at": None,
            "archived_at": None,
        }
        if behavior is not None:
            dream["output_behavior"] = behavior
        self.dreams[dream["id"]] = dream
        return json_response(self._create_status(), dream)

    async def _h_list_dreams(self, request: web.Request) -> web.Response:
        query = request.query
        statuses = set(query.getall("statuses[]", []))
        if not statuses <= set(_DREAM_STATUSES):
            raise bad_request("statuses holds an unknown status", "statuses")
        page = paginate(
            list(self.dreams.values()),
            query,
            default_order="desc",
            keep=lambda dream: not statuses or dream["status"] in statuses,
            archivable=True,
        )
        return json_response(200, page)

    async def _h_dream_action(self, request: web.Request) -> web.Response:
        dream = self._dream(request.match_info["id"])
        if request.path.endswith("/archive"):
            if dream["archived_at"] is None:
                dream["archived_at"] = self._ids.now()
        elif dream["status"] in ("pending", "running"):
            dream.update(status="canceled", ended_at=self._ids.now())
        elif dream["status"] != "canceled":
            raise conflict(f"dream is {dream['status']}: it cannot be canceled")
        return json_response(200, dream)

    # ------------------------------------------------------------------ work

    def add_work(
        self, environment_id: str, session_id: str, metadata: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Queue a work item for ``session_id`` in ``environment_id``; returns it."""
        item: dict[str, Any] = {
            "id": self._ids.resource("work"),
            "type": "work",
            "environment_id": environment_id,
            "data": {"type": "session", "id": session_id},
            "state": "queued",
            "created_at": self._ids.now(),
            "acknowledged_at": None,
            "started_at": None,
            "latest_heartbeat_at": None,
            "stop_requested_at": None,
            "stopped_at": None,
            "metadata": dict(metadata or {}),
        }
        self.work[item["id"]] = item
        self._work_added.set()
        return item

    def session_created(self, session: Mapping[str, Any]) -> None:
        """Queue the work of a session created in a self-hosted environment."""
        env = self._environment(str(session["environment_id"]))
        if isinstance(env.get("config"), dict) and env["config"].get("type") == "self_hosted":
            self.add_work(env["id"], str(session["id"]))

    def _work(self, request: web.Request) -> dict[str, Any]:
        env_id, work_id = request.match_info["id"], request.match_info["wid"]
        item = self.work.get(work_id)
        if item is None or item["environment_id"] != env_id:
            raise not_found("work", work_id)
        return item

    def _env_work(self, env_id: str) -> list[dict[str, Any]]:
        self._environment(env_id)
        return [w for w in self.work.values() if w["environment_id"] == env_id]

    def _next_work(self, env_id: str, reclaim_ms: int | None) -> dict[str, Any] | None:
        loop_now = asyncio.get_running_loop().time()
        for item in self._env_work(env_id):
            if item["state"] != "queued":
                continue
            handed = self._handed_out.get(item["id"])
            if handed is None or (
                reclaim_ms is not None and loop_now - handed >= reclaim_ms / 1000
            ):
                self._handed_out[item["id"]] = loop_now
                return item
        return None

    async def _h_poll_work(self, request: web.Request) -> web.Response:
        env_id = request.match_info["id"]
        block_ms = int_param(request.query, "block_ms", non_negative=True) or 0
        reclaim = int_param(request.query, "reclaim_older_than_ms", non_negative=True)
        deadline = asyncio.get_running_loop().time() + min(block_ms, _MAX_BLOCK_MS) / 1000
        self._pollers[env_id] = self._pollers.get(env_id, 0) + 1
        try:
            while True:
                self._work_added.clear()
                item = self._next_work(env_id, reclaim)
                remaining = deadline - asyncio.get_running_loop().time()
                if item is not None or remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await self._work_added.wait()
                except TimeoutError:
                    pass
        finally:
            self._pollers[env_id] -= 1
        if item is None:
            return json_response(200, None)
        return json_response(200, {**item, "secret": f"wsec_{item['id']}"})

    async def _h_work_stats(self, request: web.Request) -> web.Response:
        env_id = request.match_info["id"]
        queued = [w for w in self._env_work(env_id) if w["state"] == "queued"]
        return json_response(
            200,
            {
                "type": "work_queue_stats",
                "depth": len(queued),
                "pending": sum(1 for w in queued if w["id"] in self._handed_out),
                "oldest_queued_at": queued[0]["created_at"] if queued else None,
                "workers_polling": self._pollers.get(env_id, 0),
            },
        )

    async def _h_update_work(self, request: web.Request) -> web.Response:
        item = self._work(request)
        body = await read_body(request)
        if body.get("metadata") is None:
            raise bad_request("Missing required field: metadata", "metadata")
        item["metadata"].update(check_metadata(body) or {})
        return json_response(200, item)

    async def _h_work_action(self, request: web.Request) -> web.Response:
        item = self._work(request)
        action = request.path.rsplit("/", 1)[1]
        now = self._ids.now()
        if action == "ack":
            if item["state"] != "queued":
                raise conflict(f"work is {item['state']}: only queued work can be acknowledged")
            item.update(state="starting", acknowledged_at=now)
            self._handed_out.pop(item["id"], None)
            return json_response(200, item)
        if action == "stop":
            body = await read_body(request, required=False)
            if body.get("force") not in (None, True, False):
                raise bad_request("force must be a boolean", "force")
            if item["state"] in ("stopping", "stopped"):
                return json_response(200, item)
            if item["state"] == "queued" or body.get("force"):
                item.update(state="stopped", stop_requested_at=now, stopped_at=now)
            else:
                item.update(state="stopping", stop_requested_at=now)
            return json_response(200, item)
        if item["state"] not in ("starting", "active"):
            raise conflict(f"work is {item['state']}: it has no lease to extend")
        ttl = int_param(request.query, "desired_ttl_seconds", non_negative=True) or _LEASE_SECONDS
        expected = request.query.get("expected_last_heartbeat")
        extended = expected is None or expected == item["latest_heartbeat_at"]
        if extended:
            if item["started_at"] is None:
                item["started_at"] = now
            item.update(state="active", latest_heartbeat_at=now)
        return json_response(
            200,
            {
                "type": "work_heartbeat",
                "last_heartbeat": item["latest_heartbeat_at"],
                "lease_extended": extended,
                "state": item["state"],
                "ttl_seconds": ttl,
            },
        )
