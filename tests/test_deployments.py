"""Deployments (and their runs), dreams and environment work: the captured answers decode
exactly, and every method works against the fake server, whose endpoints keep state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from qoder_async import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    QoderClient,
    RawResponse,
    UserMessage,
)
from qoder_async._api.deployments import env_lines
from qoder_async._core.convert import (
    structure_deployment,
    structure_deployment_run,
    structure_dream,
    structure_work,
    structure_work_heartbeat,
    structure_work_queue_stats,
)
from qoder_async.testing import CannedResponse, FakeQoderServer
from qoder_async.types import (
    AgentReference,
    BaseEvent,
    Deployment,
    DeploymentRun,
    Dream,
    DreamInput,
    Usage,
    UserDefineOutcome,
    Work,
    WorkHeartbeat,
    WorkQueueStats,
)

# Copied from the official TS SDK's tests/fixtures/managed/api-contracts.json (the file
# names its source and commit).
CAPTURES = json.loads(
    (Path(__file__).parent / "fixtures" / "managed" / "deployments-dreams-work.json").read_text()
)["answers"]
STRUCTURE: dict[str, Callable[[Any], Any]] = {
    "deployment": structure_deployment,
    "deployment_run": structure_deployment_run,
    "dream": structure_dream,
    "work": structure_work,
    "work_heartbeat": structure_work_heartbeat,
    "work_queue_stats": structure_work_queue_stats,
}
# Typed fields whose value is the wire's under another form: a Usage (its raw), events.
USAGE_KEYS = {"usage"}


def assert_typed(value: Any, wire: Any, where: str) -> None:
    """``value`` (a model, tuple, scalar) holds exactly ``wire``: every key of every object
    reachable as a typed attribute with the same value (none only in ``.raw``)."""
    if isinstance(value, BaseEvent):
        assert value.id == wire.get("id"), where
        assert isinstance(value, UserMessage | UserDefineOutcome), where
        assert value.type == wire["type"], where
        if isinstance(value, UserMessage):
            assert [{"type": "text", "text": b.text} for b in value.content] == wire["content"]
        return
    if isinstance(value, Usage):
        assert value.raw == wire, where
        for key, number in wire.items():
            assert getattr(value, key) == number, f"{where}.{key}"
        return
    if attrs.has(type(value)):
        assert isinstance(wire, Mapping), where
        names = {f.name for f in attrs.fields(type(value))}
        for key, item in wire.items():
            assert key in names, f"{where}.{key} is reachable only through .raw"
            assert_typed(getattr(value, key), item, f"{where}.{key}")
        return
    if isinstance(wire, list):
        assert isinstance(value, tuple), where
        assert len(value) == len(wire), where
        for i, (v, w) in enumerate(zip(value, wire, strict=True)):
            assert_typed(v, w, f"{where}[{i}]")
        return
    assert value == wire, where
    assert type(value) is type(wire), where


def _items(response: Any) -> list[Any]:
    if isinstance(response, dict) and isinstance(response.get("data"), list):
        return list(response["data"])
    return [response]


@pytest.mark.parametrize("capture", CAPTURES, ids=[c["id"] for c in CAPTURES])
def test_every_captured_answer_decodes_exactly(capture: dict[str, Any]) -> None:
    response = capture["response"]
    if response is None:  # environments.work.poll: no work
        assert capture["id"] == "environments.work.poll"
        return
    for item in _items(response):
        model = STRUCTURE[item["type"]](item)
        assert model.raw == item
        assert_typed(model, item, capture["id"])


def test_the_captures_cover_every_method_of_these_resources() -> None:
    ids = {c["id"] for c in CAPTURES}
    assert ids == {
        *(f"deployments.{m}" for m in ("create", "retrieve", "update", "list", "archive")),
        *(f"deployments.{m}" for m in ("pause", "unpause", "run")),
        "deploymentRuns.retrieve",
        "deploymentRuns.list",
        *(f"dreams.{m}" for m in ("create", "retrieve", "list", "archive", "cancel")),
        *(f"environments.work.{m}" for m in ("retrieve", "update", "list", "ack")),
        *(f"environments.work.{m}" for m in ("heartbeat", "poll", "stats", "stop")),
    }


def test_deployment_environment_variables_stay_the_lines_string_and_out_of_the_repr() -> None:
    [create] = [c for c in CAPTURES if c["id"] == "deployments.create"]
    dep = structure_deployment(create["response"])
    assert dep.environment_variables == "FEATURE_FLAG=on\nLOG_LEVEL=info"
    assert "FEATURE_FLAG" not in repr(dep)
    assert isinstance(dep.agent, AgentReference)
    assert dep.agent.version == 1
    [event] = dep.initial_events
    assert isinstance(event, UserMessage)
    assert event.text == "Generate today's status report"


def test_a_deployment_with_an_object_for_its_variables_is_a_typed_error() -> None:
    from qoder_async._core.convert import ShapeError

    with pytest.raises(ShapeError, match="environment_variables"):
        structure_deployment({"id": "dep_1", "environment_variables": {"A": "1"}})
    with pytest.raises(ShapeError, match=r"schedule\.upcoming_runs_at"):
        structure_deployment({"id": "dep_1", "schedule": {"upcoming_runs_at": "soon"}})
    with pytest.raises(ShapeError, match=r"inputs\[0\]\.session_ids"):
        structure_dream({"id": "drm_1", "inputs": [{"type": "sessions", "session_ids": 3}]})


def test_env_lines() -> None:
    assert env_lines({"A": "1", "B": "x=y"}) == "A=1\nB=x=y"
    assert env_lines("A=1") == "A=1"
    assert env_lines(None) is None
    for bad in ({"A\nB": "1"}, {"": "1"}, {"A=B": "1"}, {"A": "1\nB=2"}):
        with pytest.raises(ConfigurationError):
            env_lines(bad)


def _capture(capture_id: str) -> Any:
    [capture] = [c for c in CAPTURES if c["id"] == capture_id]
    return capture["response"]


async def test_captured_pages_page_as_they_say(
    client: QoderClient, server: FakeQoderServer
) -> None:
    json_headers = {"Content-Type": "application/json"}
    runs, dreams = _capture("deploymentRuns.list"), _capture("dreams.list")
    last = json.dumps({"data": [], "has_more": False, "next_page": None}).encode()
    server.faults.respond_next = [
        CannedResponse("GET", "/deployment_runs$", 200, json_headers, json.dumps(runs).encode()),
        CannedResponse("GET", "/deployment_runs$", 200, json_headers, last),
        CannedResponse("GET", "/dreams$", 200, json_headers, json.dumps(dreams).encode()),
    ]
    got = [r.id async for r in client.deployment_runs.list(limit=2)]
    assert got == [r["id"] for r in runs["data"]]
    assert server.requests[-1].query["page"] == [runs["next_page"]]  # next_page, as sent
    assert [d.id async for d in client.dreams.list()] == [dreams["data"][0]["id"]]  # no cursor
    assert server.faults.respond_next == []
    assert len([r for r in server.requests if r.path.endswith("/dreams")]) == 1


# --------------------------------------------------------------------------- the fake


async def _setup(server: FakeQoderServer) -> tuple[str, str]:
    return server.add_agent()["id"], server.add_environment()["id"]


async def test_deployment_lifecycle(client: QoderClient, server: FakeQoderServer) -> None:
    agent_id, env_id = await _setup(server)
    dep = await client.deployments.create(
        name="nightly",
        agent=agent_id,
        environment_id=env_id,
        initial_events=[UserMessage("Generate today's status report")],
        environment_variables={"FEATURE_FLAG": "on", "LOG_LEVEL": "info"},
        schedule={"type": "cron", "expression": "0 9 * * *", "timezone": "Asia/Shanghai"},
        metadata={"team": "platform"},
    )
    assert isinstance(dep, Deployment)
    assert dep.id.startswith("dep_")
    assert dep.status == "active"
    assert dep.agent == AgentReference(id=agent_id, type="agent", version=1)
    assert dep.environment_variables == "FEATURE_FLAG=on\nLOG_LEVEL=info"
    assert dep.schedule is not None
    assert dep.schedule.expression == "0 9 * * *"
    sent = json.loads(server.requests[-1].body)
    assert sent["environment_variables"] == "FEATURE_FLAG=on\nLOG_LEVEL=info"

    paused = await client.deployments.pause(dep.id)
    assert paused.status == "paused"
    assert paused.paused_reason is not None
    assert paused.paused_reason.type == "manual"
    assert [d.id async for d in client.deployments.list(status="paused")] == [dep.id]
    assert [d.id async for d in client.deployments.list(status="active")] == []
    unpaused = await client.deployments.unpause(dep.id)
    assert (unpaused.status, unpaused.paused_reason) == ("active", None)

    updated = await client.deployments.update(dep.id, name="nightly-v2", environment_variables="")
    assert (updated.name, updated.environment_variables) == ("nightly-v2", "")
    assert (await client.deployments.retrieve(dep.id)).name == "nightly-v2"

    archived = await client.deployments.archive(dep.id)
    assert archived.archived_at is not None
    assert [d async for d in client.deployments.list()] == []
    assert [d.id async for d in client.deployments.list(include_archived=True)] == [dep.id]
    with pytest.raises(BadRequestError, match="archived"):
        await client.deployments.run(dep.id)
    with pytest.raises(NotFoundError):
        await client.deployments.retrieve("dep_missing")


async def test_a_deployment_is_checked_like_a_session(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent_id, env_id = await _setup(server)
    good: dict[str, Any] = {
        "name": "d",
        "agent": agent_id,
        "environment_id": env_id,
        "initial_events": [UserMessage("hi")],
    }
    with pytest.raises(NotFoundError):
        await client.deployments.create(**{**good, "agent": "agent_missing"})
    with pytest.raises(NotFoundError):
        await client.deployments.create(**{**good, "environment_id": "env_missing"})
    with pytest.raises(BadRequestError, match="initial_events"):
        await client.deployments.create(**{**good, "initial_events": []})
    with pytest.raises(BadRequestError, match="KEY=VALUE"):
        await client.deployments.create(**{**good, "environment_variables": "no equals sign"})
    with pytest.raises(BadRequestError, match="schedule"):
        await client.deployments.create(**{**good, "schedule": {"type": "cron"}})
    with pytest.raises(BadRequestError, match=r"resources\[0\]"):
        await client.deployments.create(**{**good, "resources": [{"type": "floppy"}]})
    pinned = await client.deployments.create(
        **{**good, "agent": {"type": "agent", "id": agent_id, "version": 1}}
    )
    assert pinned.agent is not None
    assert pinned.agent.version == 1
    repo = {
        "type": "github_repository",
        "url": "https://github.com/o/r",
        "authorization_token": "ghp_secret",
    }
    with_repo = await client.deployments.create(**{**good, "resources": [repo]})
    assert "ghp_secret" not in json.dumps(with_repo.raw)  # write-only
    assert with_repo.resources[0]["url"] == "https://github.com/o/r"
    run = await client.deployments.run(with_repo.id)
    assert run.session_id is not None
    [mounted] = [r async for r in client.sessions.resources.list(run.session_id)]
    assert server.resource_secret(run.session_id, mounted.id) == "ghp_secret"


async def test_a_run_starts_a_session_whose_turn_follow_yields(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent_id, env_id = await _setup(server)
    dep = await client.deployments.create(
        name="d",
        agent=agent_id,
        environment_id=env_id,
        initial_events=[UserMessage("status report")],
        environment_variables="REGION=eu",
    )
    run = await client.deployments.run(dep.id)
    assert isinstance(run, DeploymentRun)
    assert run.id.startswith("drun_")
    assert (run.deployment_id, run.error) == (dep.id, None)
    assert run.trigger_context is not None
    assert run.trigger_context.type == "manual"
    assert run.session_id is not None
    session = server.session(run.session_id)
    assert session["environment_variables"] == {"REGION": "eu"}

    turn = await client.session(run.session_id).follow()
    async with asyncio.timeout(10):
        result = await turn.result()
    assert 'You said: "status report"' in result.text
    assert turn.accepted.anchor is not None
    assert turn.accepted.anchor.id == server.user_messages(run.session_id)[0]["id"]

    assert (await client.deployment_runs.retrieve(run.id)).session_id == run.session_id
    assert (await client.deployments.runs.retrieve(dep.id, run.id)).id == run.id
    second = await client.deployments.run(dep.id)
    assert [r.id async for r in client.deployments.runs.list(dep.id)] == [second.id, run.id]
    assert [r.id async for r in client.deployment_runs.list(deployment_id=dep.id, limit=1)] == [
        second.id,
        run.id,
    ]  # one per page: the pages follow each other
    assert [r async for r in client.deployment_runs.list(has_error=True)] == []
    other = await client.deployments.create(
        name="o", agent=agent_id, environment_id=env_id, initial_events=[UserMessage("x")]
    )
    with pytest.raises(NotFoundError):
        await client.deployments.runs.retrieve(other.id, run.id)


async def test_follow_claims_the_message_from_the_stream_when_it_is_not_stored_yet(
    client: QoderClient, server: FakeQoderServer
) -> None:
    session_id = str(server.add_session()["id"])
    handle = client.session(session_id)
    turn = await handle.follow()  # nothing stored yet: the stream starts at the beginning
    await handle.wait_connected()
    with pytest.raises(ConfigurationError, match="follow"):
        await handle.follow()  # the connection is open: its message may have gone by
    await client.sessions.events.send(session_id, UserMessage("late"))
    async with asyncio.timeout(10):
        result = await turn.result()
    assert 'You said: "late"' in result.text


async def test_a_run_the_session_refuses_is_a_run_with_an_error(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent_id, env_id = await _setup(server)
    dep = await client.deployments.create(
        name="d", agent=agent_id, environment_id=env_id, initial_events=[UserMessage("x")]
    )
    await client.environments.archive(env_id)
    run = await client.deployments.run(dep.id)
    assert run.session_id is None
    assert run.error is not None
    assert run.error.type == "session_creation_rejected"
    assert [r.id async for r in client.deployment_runs.list(has_error=True)] == [run.id]


async def test_dreams(client: QoderClient, server: FakeQoderServer) -> None:
    session_id = str(server.add_session()["id"])
    dream = await client.dreams.create(
        inputs=[
            {"type": "memory_store", "memory_store_id": "memstore_1"},
            {"type": "sessions", "session_ids": [session_id]},
        ],
        model="auto",
        instructions="Focus on code style",
    )
    assert isinstance(dream, Dream)
    assert dream.status == "pending"
    assert dream.inputs[1] == DreamInput(type="sessions", session_ids=(session_id,))
    assert dream.model is not None
    assert dream.model.id == "auto"
    assert dream.usage is not None
    assert dream.usage.input_tokens == 0
    assert (await client.dreams.retrieve(dream.id)).instructions == "Focus on code style"
    assert [d.id async for d in client.dreams.list(statuses=["pending"])] == [dream.id]
    canceled = await client.dreams.cancel(dream.id)
    assert (canceled.status, canceled.ended_at is not None) == ("canceled", True)
    assert [d async for d in client.dreams.list(statuses=["pending"])] == []
    archived = await client.dreams.archive(dream.id)
    assert archived.archived_at is not None
    assert [d async for d in client.dreams.list()] == []
    assert [d.id async for d in client.dreams.list(include_archived=True)] == [dream.id]
    with pytest.raises(NotFoundError):
        await client.dreams.create(
            inputs=[{"type": "sessions", "session_ids": ["sess_missing"]}], model="auto"
        )
    with pytest.raises(BadRequestError, match="inputs"):
        await client.dreams.create(inputs=[], model="auto")
    server_side = server._deployments.dreams[dream.id]
    server_side["status"] = "completed"
    with pytest.raises(ConflictError):
        await client.dreams.cancel(dream.id)


async def test_environment_work_queue(client: QoderClient, server: FakeQoderServer) -> None:
    env = await client.environments.create(name="byoc", config={"type": "self_hosted"})
    work = client.environments.work
    assert await work.poll(env.id) is None  # nothing queued, no wait
    stats = await work.stats(env.id)
    assert isinstance(stats, WorkQueueStats)
    assert (stats.depth, stats.pending, stats.oldest_queued_at) == (0, 0, None)

    # A long poll is answered by the work a new session in the environment queues.
    poll = asyncio.create_task(work.poll(env.id, block_ms=10_000, worker_id="w1"))
    agent_id = server.add_agent()["id"]
    await asyncio.sleep(0)
    session = await client.sessions.create(agent=agent_id, environment_id=env.id)
    async with asyncio.timeout(10):
        item = await poll
    assert isinstance(item, Work)
    assert item.state == "queued"
    assert item.data is not None
    assert (item.data.type, item.data.id) == ("session", session.id)
    assert item.secret is not None
    assert item.secret not in repr(item)
    assert server.requests[-2].headers["worker-id"] == "w1"
    assert (await work.stats(env.id)).pending == 1
    assert await work.poll(env.id) is None  # handed out: not again...
    again = await work.poll(env.id, reclaim_older_than_ms=0)  # ...unless reclaimed
    assert again is not None
    assert again.id == item.id

    acked = await work.ack(env.id, item.id)
    assert (acked.state, acked.acknowledged_at is not None) == ("starting", True)
    with pytest.raises(ConflictError):
        await work.ack(env.id, item.id)
    beat = await work.heartbeat(env.id, item.id, desired_ttl_seconds=30)
    assert isinstance(beat, WorkHeartbeat)
    assert (beat.state, beat.lease_extended, beat.ttl_seconds) == ("active", True, 30)
    stale = await work.heartbeat(env.id, item.id, expected_last_heartbeat="2000-01-01T00:00:00Z")
    assert stale.lease_extended is False
    fresh = await work.heartbeat(env.id, item.id, expected_last_heartbeat=beat.last_heartbeat)
    assert fresh.lease_extended is True

    updated = await work.update(env.id, item.id, metadata={"worker": "w1"})
    assert updated.metadata == {"worker": "w1"}
    merged = await work.update(env.id, item.id, metadata={"job": "j"})
    assert merged.metadata == {"worker": "w1", "job": "j"}
    assert [w.id async for w in work.list(env.id)] == [item.id]
    stopped = await work.stop(env.id, item.id)
    assert stopped.state == "stopping"
    assert stopped.stop_requested_at is not None
    assert (await work.retrieve(env.id, item.id)).state == "stopping"
    with pytest.raises(NotFoundError):
        await work.retrieve(env.id, "work_missing")
    sent = len(server.requests)
    for bad in ("w\r\nX-Evil: 1", ""):
        with pytest.raises(ConfigurationError, match="worker_id"):
            await work.poll(env.id, worker_id=bad)
    assert len(server.requests) == sent


async def test_seeded_work_and_a_forced_stop(client: QoderClient, server: FakeQoderServer) -> None:
    env_id = server.add_environment(config={"type": "self_hosted"})["id"]
    item = server.add_work(env_id, "sess_elsewhere", {"job": "daily"})
    assert (await client.environments.work.stats(env_id)).depth == 1
    stopped = await client.environments.work.stop(env_id, item["id"], force=True)
    assert (stopped.state, stopped.stopped_at is not None) == ("stopped", True)
    assert (await client.environments.work.stats(env_id)).depth == 0


async def test_raw_responses_and_idempotency_keys(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent_id, env_id = await _setup(server)
    raw = await client.deployments.with_raw_response.create(
        name="d",
        agent=agent_id,
        environment_id=env_id,
        initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "x"}]}],
        idempotency_key="k-dep",
    )
    assert isinstance(raw, RawResponse)
    assert server.requests[-1].headers["idempotency-key"] == "k-dep"
    dep = await raw.parse()
    again = await client.deployments.create(
        name="d",
        agent=agent_id,
        environment_id=env_id,
        initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "x"}]}],
        idempotency_key="k-dep",
    )
    assert again.id == dep.id  # replayed, not created twice
    page = await client.deployment_runs.with_raw_response.list()
    assert page.status_code == 200
    assert await page.parse() == []
    await client.deployments.run(dep.id, idempotency_key="k-run")
    assert server.requests[-1].headers["idempotency-key"] == "k-run"
    stats = await client.environments.work.with_raw_response.stats(env_id)
    assert isinstance(await stats.parse(), WorkQueueStats)
