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

from qoder_async.testing import FakeQoderServer, StopReasonJSON, TurnContext, tool_script


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
        assert event.model_extra["turn_id"] == stored[0]["turn_id"]
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
