"""The official Python SDK (``qca-sdk``) drives FakeQoderServer the way a new user would.

If the SDK rejects something the fake sends, the fake is wrong (it must be
faithful) -- unless the SDK contradicts the documented API.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from qca import AsyncManaged, AuthenticationError, ConflictError, NotFoundError, RateLimitError

from qoder_async.testing import (
    FakeQoderServer,
    StopReasonJSON,
    TurnContext,
    multiagent_script,
    subagent_tool_script,
    tool_script,
)


@pytest.fixture
async def server() -> AsyncIterator[FakeQoderServer]:
    async with FakeQoderServer(heartbeat_interval=0.05) as srv:
        yield srv


@pytest.fixture
async def client(server: FakeQoderServer) -> AsyncIterator[AsyncManaged]:
    async with AsyncManaged(
        access_token=server.token, base_url=server.base_url, max_retries=0, timeout=10.0
    ) as managed:
        yield managed


async def new_session(client: AsyncManaged) -> Any:
    env = await client.environments.create(name="demo", config={"type": "cloud"})
    agent = await client.agents.create(
        name="demo-agent",
        model={"id": "ultimate"},
        system="You are a helpful assistant.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    return await client.sessions.create(environment_id=env.id, agent=agent.id)


def hello(text: str = "Hello") -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


async def test_quickstart_send_then_stream_from_the_sent_event(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    env = await client.environments.create(name="demo", config={"type": "cloud"})
    assert env.id is not None
    assert env.id.startswith("env_")
    assert env.type == "environment"
    assert env._request_id is not None
    assert env._request_id.startswith("req_")
    agent = await client.agents.create(
        name="demo-agent",
        model={"id": "ultimate"},
        system="You are a helpful assistant.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    assert agent.version == 1
    assert agent.system == "You are a helpful assistant."
    session = await client.sessions.create(environment_id=env.id, agent=agent.id, title="qs")
    assert session.status == "idle"
    assert session.agent is not None
    assert session.agent.id == agent.id
    assert session.usage is not None
    assert session.usage.input_tokens == 0
    assert isinstance(session.created_at, datetime)

    sent = await client.sessions.events.send(
        session.id, events=[hello()], extra_headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert sent.data is not None
    echo = sent.data[0]
    assert echo.type == "user.message"
    assert echo.id is not None
    assert echo.content is not None
    assert echo.content[0].text == "Hello"
    assert isinstance(echo.processed_at, datetime)

    events = []
    async with await client.sessions.events.stream(
        session.id, last_event_id=echo.id, event_deltas=["agent.message"]
    ) as stream:
        async for event in stream:
            events.append(event)
            if event.type == "session.status_idle":
                break
        assert stream.last_event_id == events[-1].id

    stored = server.stored_events(session.id)
    assert [e.id for e in events] == [e["id"] for e in stored[1:]]
    by_type = {e.type: e for e in events}
    for event in events:
        assert isinstance(event.processed_at, datetime)
        assert event.model_extra is not None
        # the production wire: no turn_id, session_id or schema_version on events
        assert not {"turn_id", "session_id", "schema_version"} & set(event.model_extra)
    assert by_type["agent.tool_use"].name == "Read"
    assert by_type["agent.tool_use"].input == {"file_path": "/workspace/README.md"}
    assert by_type["agent.tool_result"].tool_use_id == by_type["agent.tool_use"].id
    message = by_type["agent.message"]
    assert message.content is not None
    assert "Hello" in (message.content[0].text or "")
    span_end = by_type["span.model_request_end"]
    assert span_end.model_request_start_id == by_type["span.model_request_start"].id
    assert span_end.model_usage is not None
    assert span_end.model_usage.input_tokens is not None
    assert span_end.model_usage.input_tokens > 0
    idle = by_type["session.status_idle"]
    assert idle.stop_reason is not None
    assert idle.stop_reason.type == "end_turn"

    retrieved = await client.sessions.retrieve(session.id)
    assert retrieved.status == "idle"
    assert retrieved.usage is not None
    assert retrieved.usage.input_tokens == span_end.model_usage.input_tokens


async def test_subscribe_first_receives_previews(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    session = await new_session(client)
    events = []
    async with await client.sessions.events.stream(
        session.id, event_deltas=["agent.message", "agent.thinking"]
    ) as stream:
        await client.sessions.events.send(session.id, events=[hello("stream it")])
        async for event in stream:
            events.append(event)
            if event.type == "session.status_idle":
                break
    message = next(e for e in events if e.type == "agent.message")
    starts = [e for e in events if e.type == "event_start"]
    assert [s.event.type for s in starts if s.event is not None] == [
        "agent.thinking",
        "agent.message",
    ]
    deltas = [e for e in events if e.type == "event_delta"]
    assert len(deltas) > 1
    assert {d.event_id for d in deltas} == {message.id}
    text = "".join(d.delta.content.text or "" for d in deltas if d.delta and d.delta.content)
    assert message.content is not None
    assert text == message.content[0].text


async def test_events_list_paginates(client: AsyncManaged, server: FakeQoderServer) -> None:
    session = await new_session(client)
    for text in ("one", "two"):
        await client.sessions.events.send(session.id, events=[hello(text)])
        await server.wait_idle(session.id)
    stored_ids = [e["id"] for e in server.stored_events(session.id)]

    first = await client.sessions.events.list(session.id, limit=5)
    assert [e.id for e in first.data] == stored_ids[:5]
    assert first.has_more is True
    assert first.next_page
    second = await first.get_next_page()
    assert [e.id for e in second.data] == stored_ids[5:10]

    walked = [e.id async for e in client.sessions.events.list(session.id, limit=4)]
    assert walked == stored_ids
    messages = [
        e.type
        async for e in client.sessions.events.list(session.id, types=["agent.message"], limit=1)
    ]
    assert messages == ["agent.message", "agent.message"]
    newest = await client.sessions.events.list(session.id, order="desc", limit=1)
    assert newest.data[0].id == stored_ids[-1]


async def test_resource_methods(client: AsyncManaged, server: FakeQoderServer) -> None:
    sessions = [await new_session(client) for _ in range(3)]
    listed = [s.id async for s in client.sessions.list(limit=2)]
    assert listed == [s.id for s in reversed(sessions)]
    updated = await client.sessions.update(sessions[0].id, title="renamed", metadata={"a": "b"})
    assert updated.title == "renamed"
    assert updated.metadata == {"a": "b"}
    cancelled = await client.sessions.cancel(sessions[0].id)
    assert cancelled.status == "canceling"
    archived = await client.sessions.archive(sessions[0].id)
    assert archived.archived_at is not None
    deleted = await client.sessions.delete(sessions[1].id)
    assert deleted.id == sessions[1].id
    assert deleted.type == "session_deleted"
    with pytest.raises(NotFoundError):
        await client.sessions.retrieve(sessions[1].id)

    agents = [a.id async for a in client.agents.list()]
    assert len(agents) == 3
    agent = await client.agents.retrieve(agents[0])
    changed = await client.agents.update(agent.id, version=1, name="renamed-agent")
    assert changed.version == 2
    environments = [e async for e in client.environments.list(limit=1)]
    assert len(environments) == 3
    env = await client.environments.retrieve(environments[0].id)
    assert env.config is not None


async def test_custom_tool_round_trip(client: AsyncManaged, server: FakeQoderServer) -> None:
    server.script = tool_script("get_weather", {"city": "Paris"})
    session = await new_session(client)
    sent = await client.sessions.events.send(session.id, events=[hello("weather?")])
    assert sent.data is not None
    events = []
    async with await client.sessions.events.stream(
        session.id, last_event_id=sent.data[0].id
    ) as stream:
        async for event in stream:
            events.append(event)
            if event.type != "session.status_idle" or event.stop_reason is None:
                continue
            if event.stop_reason.type == "requires_action":
                assert event.stop_reason.event_ids is not None
                uses = [e for e in events if e.id in event.stop_reason.event_ids]
                assert [(u.type, u.name, u.input) for u in uses] == [
                    ("agent.custom_tool_use", "get_weather", {"city": "Paris"})
                ]
                await client.sessions.events.send(
                    session.id,
                    events=[
                        {
                            "type": "user.custom_tool_result",
                            "custom_tool_use_id": uses[0].id,
                            "content": [{"type": "text", "text": "sunny"}],
                        }
                    ],
                )
            else:
                break
    reply = [e for e in events if e.type == "agent.message"][-1]
    assert reply.content is not None
    assert reply.content[0].text == "get_weather returned: sunny"


async def test_errors_map_to_sdk_exceptions(client: AsyncManaged, server: FakeQoderServer) -> None:
    gate = asyncio.Event()

    async def waits(ctx: TurnContext) -> StopReasonJSON | None:
        await gate.wait()
        return None

    server.script = waits
    session = await new_session(client)
    await client.sessions.events.send(session.id, events=[hello()])
    with pytest.raises(ConflictError) as conflict:
        await client.sessions.events.send(session.id, events=[hello("again")])
    assert conflict.value.status_code == 409
    assert conflict.value.request_id is not None
    gate.set()
    await server.wait_idle(session.id)
    with pytest.raises(NotFoundError):
        await client.sessions.retrieve("sess_missing")
    server.faults.throttle_first = 1
    with pytest.raises(RateLimitError):
        await client.sessions.retrieve(session.id)
    async with AsyncManaged(
        access_token="wrong", base_url=server.base_url, max_retries=0
    ) as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.sessions.retrieve(session.id)


async def test_sdk_retries_recover_from_faults(server: FakeQoderServer) -> None:
    async with AsyncManaged(
        access_token=server.token, base_url=server.base_url, max_retries=2
    ) as client:
        session = await new_session(client)
        server.faults.throttle_first = 1
        server.faults.retry_after = 0.01
        assert (await client.sessions.retrieve(session.id)).id == session.id
        # A 500 after the events were stored: the SDK retries (the key makes it
        # safe) and the replayed original answer comes back; nothing is sent twice.
        server.faults.fail_send_after_store = 1
        sent = await client.sessions.events.send(
            session.id, events=[hello()], extra_headers={"Idempotency-Key": "once"}
        )
        assert sent.data is not None
        assert len(server.user_messages(session.id)) == 1
        assert sent.data[0].id == server.user_messages(session.id)[0]["id"]
        await server.wait_idle(session.id)

        server.faults.drop_after_events = 5
        events = []
        stream = client.sessions.events.resumable_stream(session.id, last_event_id=sent.data[0].id)
        async for event in stream:
            events.append(event)
            if event.type == "session.status_idle":
                break
    stored = server.stored_events(session.id)
    assert [e.id for e in events] == [e["id"] for e in stored[1:]]
    assert server.fault_counts["drop_after_events"] >= 1


async def test_threads_through_the_sdk(client: AsyncManaged, server: FakeQoderServer) -> None:
    server.script = multiagent_script
    session = await new_session(client)
    await client.sessions.events.send(session.id, events=[hello("the moon")])
    await server.wait_idle(session.id)
    threads = [t async for t in client.sessions.threads.list(session.id, limit=1)]
    assert len(threads) == 1
    thread = threads[0]
    assert thread.id is not None
    assert thread.id.startswith("sthr_")
    assert thread.status == "idle"
    assert thread.session_id == session.id
    assert thread.agent is not None
    assert thread.agent.name == "researcher"
    assert thread.stats is not None
    assert thread.stats.duration_seconds is not None
    assert isinstance(thread.created_at, datetime)
    fetched = await client.sessions.threads.retrieve(thread.id, session_id=session.id)
    assert fetched.id == thread.id
    own = [e["id"] for e in server.stored_events(session.id) if e.get("session_thread_id")]
    listed = [
        e
        async for e in client.sessions.threads.events.list(
            thread.id, session_id=session.id, limit=2
        )
    ]
    assert [e.id for e in listed] == own
    assert all(e.session_thread_id == thread.id for e in listed)
    message = next(e for e in listed if e.type == "agent.message")
    assert message.content is not None
    assert message.content[0].text == "Research notes on: the moon"
    stream = await client.sessions.threads.events.stream(thread.id, session_id=session.id)
    async with stream:
        streamed = []
        async for event in stream:
            streamed.append(event)
            if event.type == "session.thread_status_idle":
                break
    assert [e.id for e in streamed] == own
    assert streamed[-1].stop_reason is not None
    assert streamed[-1].stop_reason.type == "end_turn"
    archived = await client.sessions.threads.archive(thread.id, session_id=session.id)
    assert archived.archived_at is not None


async def test_subagent_tool_answer_echoing_the_thread(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    server.script = subagent_tool_script("lookup", {"q": "x"})
    session = await new_session(client)
    await client.sessions.events.send(session.id, events=[hello()])
    idle = await server.wait_for_event(session.id, "session.status_idle")
    [use_id] = idle["stop_reason"]["event_ids"]
    events = [e async for e in client.sessions.events.list(session.id)]
    use = next(e for e in events if e.id == use_id)
    assert use.type == "agent.custom_tool_use"
    assert use.session_thread_id is not None
    await client.sessions.events.send(
        session.id,
        events=[
            {
                "type": "user.custom_tool_result",
                "custom_tool_use_id": use_id,
                "session_thread_id": use.session_thread_id,
                "content": [{"type": "text", "text": "found"}],
            }
        ],
    )
    await server.wait_idle(session.id)
    reply = server.stored_events(session.id)[-2]
    assert reply["content"][0]["text"] == "worker reports: lookup returned: found"


async def test_files_through_the_sdk(client: AsyncManaged, server: FakeQoderServer) -> None:
    uploaded = await client.files.upload(
        file=("notes.txt", b"hello file", "text/plain"), metadata={"k": "v"}
    )
    assert uploaded.id is not None
    assert uploaded.id.startswith("file_")
    assert uploaded.type == "file"
    assert uploaded.filename == "notes.txt"
    assert uploaded.mime_type == "text/plain"
    assert uploaded.size_bytes == len(b"hello file")
    assert uploaded.metadata == {"k": "v"}
    assert uploaded.downloadable is True
    second = await client.files.upload(file=("b.bin", b"\x00\x01"), name="renamed.bin")
    assert second.filename == "renamed.bin"
    listed = [f.id async for f in client.files.list(limit=1)]
    assert listed == [second.id, uploaded.id]
    meta = await client.files.retrieve_metadata(uploaded.id)
    assert meta.created_at is not None
    async with await client.files.download(uploaded.id) as download:
        assert await download.read() == b"hello file"
        assert download.headers["content-type"] == "text/plain"
    # The SDK asks for a download link, then fetches it without credentials.
    storage = [r for r in server.requests if r.path.startswith("/_fake_storage/")]
    assert len(storage) == 1
    assert "authorization" not in storage[0].headers

    session = await new_session(client)
    sent = await client.sessions.events.send(
        session.id,
        events=[
            {
                "type": "user.message",
                "content": [
                    {"type": "text", "text": "see attached"},
                    {"type": "document", "source": {"type": "file", "file_id": uploaded.id}},
                ],
            }
        ],
    )
    assert sent.data is not None
    await server.wait_idle(session.id)
    reply = next(e for e in server.stored_events(session.id) if e["type"] == "agent.message")
    assert f"notes.txt ({uploaded.id})" in reply["content"][0]["text"]

    deleted = await client.files.delete(uploaded.id)
    assert deleted.id == uploaded.id
    with pytest.raises(NotFoundError):
        await client.files.retrieve_metadata(uploaded.id)


async def test_session_resources_through_the_sdk(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    env = await client.environments.create(name="demo", config={"type": "cloud"})
    agent = await client.agents.create(name="a", model={"id": "ultimate"})
    doc = await client.files.upload(file=("data.csv", b"a,b\n1,2\n", "text/csv"))
    assert doc.id is not None
    session = await client.sessions.create(
        environment_id=env.id,
        agent={"type": "agent_with_overrides", "id": agent.id, "system": "Overridden."},
        resources=[
            {
                "type": "github_repository",
                "url": "https://github.com/acme/app",
                "checkout": {"type": "branch", "name": "main"},
                "authorization_token": "ghp_first",
            }
        ],
        vault_ids=["vault_1"],
        environment_variables={"MODE": "test"},
        budget={"type": "limit", "max_credit_cost": "5.00"},
    )
    assert session.agent is not None
    assert session.agent.system == "Overridden."
    assert session.environment_variables == {"MODE": "test"}
    assert session.vault_ids == ["vault_1"]
    assert session.budget is not None
    assert session.budget.max_credit_cost == "5.00"
    assert session.resources is not None
    repo = session.resources[0]
    assert repo.checkout is not None
    assert repo.checkout.name == "main"
    added = await client.sessions.resources.add(
        session.id, type="file", file_id=doc.id, mount_path="/data/data.csv"
    )
    assert added.file_id == doc.id
    assert added.mount_path == "/data/data.csv"
    listed = [r.id async for r in client.sessions.resources.list(session.id, limit=1)]
    assert listed == [repo.id, added.id]
    assert repo.id is not None
    got = await client.sessions.resources.retrieve(repo.id, session_id=session.id)
    assert got.url == "https://github.com/acme/app"
    await client.sessions.resources.update(
        repo.id, session_id=session.id, authorization_token="ghp_second"
    )
    assert server.resource_secret(session.id, repo.id) == "ghp_second"
    deleted = await client.sessions.resources.delete(repo.id, session_id=session.id)
    assert deleted.id == repo.id
    updated = await client.sessions.update(
        session.id, agent={"model": "auto"}, environment_variables={"MODE": "prod"}
    )
    assert updated.agent is not None
    assert updated.agent.model == "auto"


async def test_versions_environments_and_models_through_the_sdk(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    agent = await client.agents.create(name="a", model={"id": "ultimate"})
    for version in (1, 2):
        await client.agents.update(agent.id, version=version, description=f"v{version + 1}")
    versions = [v.version async for v in client.agents.versions.list(agent.id, limit=1)]
    assert versions == [3, 2, 1]
    env = await client.environments.create(name="e", config={"type": "cloud"})
    assert env.id is not None
    renamed = await client.environments.update(env.id, name="renamed")
    assert renamed.name == "renamed"
    gone = await client.environments.delete(env.id)
    assert gone.id == env.id
    with pytest.raises(NotFoundError):
        await client.environments.retrieve(env.id)
    models = [m async for m in client.models.list()]
    assert {m.id for m in models} >= {"ultimate"}
    assert all(m.is_enabled for m in models)


async def test_deployments_and_their_runs_through_the_sdk(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    env = await client.environments.create(name="e", config={"type": "cloud"})
    agent = await client.agents.create(name="a", model={"id": "ultimate"})
    assert env.id is not None
    assert agent.id is not None
    dep = await client.deployments.create(
        agent=agent.id,
        environment_id=env.id,
        initial_events=[hello("status report")],
        name="nightly",
        environment_variables="FEATURE_FLAG=on\nLOG_LEVEL=info",
        schedule={"type": "cron", "expression": "0 9 * * *", "timezone": "Asia/Shanghai"},
        metadata={"team": "platform"},
    )
    assert dep.id is not None
    assert dep.id.startswith("dep_")
    assert dep.type == "deployment"
    assert dep.environment_variables == "FEATURE_FLAG=on\nLOG_LEVEL=info"
    assert dep.agent is not None
    assert (dep.agent.id, dep.agent.version) == (agent.id, 1)
    assert dep.schedule is not None
    assert dep.schedule.timezone == "Asia/Shanghai"
    assert isinstance(dep.created_at, datetime)
    assert (await client.deployments.retrieve(dep.id)).name == "nightly"
    assert (await client.deployments.update(dep.id, name="v2")).name == "v2"
    paused = await client.deployments.pause(dep.id)
    assert paused.status == "paused"
    assert paused.paused_reason is not None
    assert paused.paused_reason.type == "manual"
    assert (await client.deployments.unpause(dep.id)).status == "active"
    assert [d.id async for d in client.deployments.list(limit=1)] == [dep.id]

    run = await client.deployments.run(dep.id)
    assert run.type == "deployment_run"
    assert run.deployment_id == dep.id
    assert run.trigger_context is not None
    assert run.trigger_context.type == "manual"
    assert run.session_id is not None
    await server.wait_idle(run.session_id)
    assert (await client.deployment_runs.retrieve(run.id or "")).session_id == run.session_id
    assert [r.id async for r in client.deployment_runs.list(deployment_id=dep.id)] == [run.id]
    assert [r.id async for r in client.deployments.runs.list(dep.id)] == [run.id]
    scoped = await client.deployments.runs.retrieve(run.id or "", deployment_id=dep.id)
    assert scoped.id == run.id
    archived = await client.deployments.archive(dep.id)
    assert archived.archived_at is not None


async def test_dreams_through_the_sdk(client: AsyncManaged, server: FakeQoderServer) -> None:
    session_id = str(server.add_session()["id"])
    dream = await client.dreams.create(
        inputs=[
            {"type": "memory_store", "memory_store_id": "memstore_1"},
            {"type": "sessions", "session_ids": [session_id]},
        ],
        model={"id": "auto", "speed": "fast"},
        output_behavior={"type": "create_new"},
    )
    assert dream.id is not None
    assert (dream.type, dream.status) == ("dream", "pending")
    assert dream.model is not None
    assert (dream.model.id, dream.model.speed) == ("auto", "fast")
    assert dream.output_behavior is not None
    assert dream.output_behavior.type == "create_new"
    assert dream.usage is not None
    assert dream.usage.input_tokens == 0
    assert (await client.dreams.retrieve(dream.id)).status == "pending"
    assert [d.id async for d in client.dreams.list(statuses=["pending"])] == [dream.id]
    canceled = await client.dreams.cancel(dream.id)
    assert canceled.status == "canceled"
    assert isinstance(canceled.ended_at, datetime)
    assert (await client.dreams.archive(dream.id)).archived_at is not None
    with pytest.raises(NotFoundError):
        await client.dreams.retrieve("drm_missing")


async def test_environment_work_through_the_sdk(
    client: AsyncManaged, server: FakeQoderServer
) -> None:
    env = await client.environments.create(name="byoc", config={"type": "self_hosted"})
    assert env.id is not None
    work = client.environments.work
    assert await work.poll(env.id) is None
    agent = await client.agents.create(name="a", model={"id": "ultimate"})
    assert agent.id is not None
    session = await client.sessions.create(environment_id=env.id, agent=agent.id)
    stats = await work.stats(env.id)
    assert (stats.type, stats.depth, stats.pending) == ("work_queue_stats", 1, 0)
    item = await work.poll(env.id, block_ms=1000, worker_id="worker-1")
    assert item is not None
    assert item.id is not None
    assert item.data is not None
    assert (item.type, item.state, item.data.id) == ("work", "queued", session.id)
    assert item.secret
    assert server.requests[-1].headers["worker-id"] == "worker-1"
    acked = await work.ack(item.id, environment_id=env.id)
    assert acked.state == "starting"
    beat = await work.heartbeat(item.id, environment_id=env.id, desired_ttl_seconds=45)
    assert (beat.type, beat.state, beat.lease_extended, beat.ttl_seconds) == (
        "work_heartbeat",
        "active",
        True,
        45,
    )
    updated = await work.update(item.id, environment_id=env.id, metadata={"worker": "w1"})
    assert updated.metadata == {"worker": "w1"}
    assert (await work.retrieve(item.id, environment_id=env.id)).state == "active"
    assert [w.id async for w in work.list(env.id)] == [item.id]
    stopped = await work.stop(item.id, environment_id=env.id, force=False)
    assert stopped.state == "stopping"
