"""The rest of the API surface against the fake: threads, session resources and create/update
fields, agent versions, environments, models, raw responses, idempotency keys, 413 and 529.

The tests whose requests or answers go through the transport differently (raw
responses and their headers, idempotency keys, per-call options, 413) run on both
transports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from qoder_async import (
    APIResponseValidationError,
    ConflictError,
    EventStream,
    MemoryCursorStore,
    NotFoundError,
    OverloadedError,
    QoderClient,
    RawResponse,
    RequestTooLargeError,
    RetryPolicy,
    UserMessage,
)
from qoder_async.testing import CannedResponse, FakeQoderServer, multiagent_script
from qoder_async.types import (
    Agent,
    AgentMessage,
    Deleted,
    FileMetadata,
    GitHubRepositoryResourceParams,
    ModelInfo,
    Session,
    SessionResource,
    SessionThread,
    SessionThreadStatusIdle,
    ThreadStats,
)

JSON = {"Content-Type": "application/json"}


async def multiagent_session(client: QoderClient, server: FakeQoderServer) -> str:
    server.script = multiagent_script
    session_id = str(server.add_session()["id"])
    await client.sessions.events.send(session_id, UserMessage("the moon"))
    await server.wait_idle(session_id)
    return session_id


# --------------------------------------------------------------------------- threads


async def test_threads_list_retrieve_archive(client: QoderClient, server: FakeQoderServer) -> None:
    session_id = await multiagent_session(client, server)
    threads = [t async for t in client.sessions.threads.list(session_id, limit=1)]
    [expected] = server.threads(session_id)
    assert [t.id for t in threads] == [expected["id"]]
    thread = threads[0]
    assert isinstance(thread, SessionThread)
    assert thread.id.startswith("sthr_")
    assert thread.session_id == session_id
    assert thread.agent_name == "researcher"
    assert thread.agent["name"] == "researcher"
    assert thread.parent_thread_id is None
    assert thread.status == "idle"
    assert isinstance(thread.stats, ThreadStats)
    assert thread.stats.duration_seconds is not None
    assert thread.usage is not None
    assert thread.raw["id"] == thread.id

    fetched = await client.sessions.threads.retrieve(session_id, thread.id)
    assert fetched.id == thread.id
    assert fetched.archived_at is None
    # Keyword calls read as the official SDK's do.
    same = await client.sessions.threads.retrieve(thread_id=thread.id, session_id=session_id)
    assert same.id == thread.id
    archived = await client.sessions.threads.archive(session_id, thread.id)
    assert archived.archived_at is not None

    with pytest.raises(NotFoundError):
        await client.sessions.threads.retrieve(session_id, "sthr_missing")


async def test_thread_events_list_and_stream(client: QoderClient, server: FakeQoderServer) -> None:
    session_id = await multiagent_session(client, server)
    [thread] = server.threads(session_id)
    own = [e["id"] for e in server.stored_events(session_id) if e.get("session_thread_id")]
    listed = [
        e async for e in client.sessions.threads.events.list(session_id, thread["id"], limit=2)
    ]
    assert [e.id for e in listed] == own
    assert all(e.session_thread_id == thread["id"] for e in listed)
    message = next(e for e in listed if isinstance(e, AgentMessage))
    assert message.text == "Research notes on: the moon"

    stream = client.sessions.threads.events.stream(session_id, thread["id"])
    assert isinstance(stream, EventStream)
    streamed = []
    async with stream:
        async for event in stream:
            streamed.append(event)
            if isinstance(event, SessionThreadStatusIdle):
                break
    assert [e.id for e in streamed] == own
    assert streamed[-1].stop_reason.type == "end_turn"
    paths = [r.path for r in server.requests if r.path.endswith("/stream")]
    assert paths == [f"/api/v1/cloud/sessions/{session_id}/threads/{thread['id']}/stream"]

    # Resuming mid-thread: only what came after the cursor.
    async with client.sessions.threads.events.stream(
        session_id, thread["id"], last_event_id=own[2]
    ) as resumed:
        rest = []
        async for event in resumed:
            rest.append(event.id)
            if isinstance(event, SessionThreadStatusIdle):
                break
    assert rest == own[3:]


async def test_a_thread_streams_cursor_is_kept_apart_from_the_sessions(
    client: QoderClient, server: FakeQoderServer
) -> None:
    session_id = await multiagent_session(client, server)
    [thread] = server.threads(session_id)
    store = MemoryCursorStore()
    async with client.sessions.threads.events.stream(
        session_id, thread["id"], cursor_store=store
    ) as stream:
        async for event in stream:
            if isinstance(event, SessionThreadStatusIdle):
                break
    assert set(store.cursors) == {thread["id"]}
    assert store.cursors[thread["id"]].event_id == event.id


# --------------------------------------------------------------------------- session fields


async def test_session_create_with_everything_the_docs_allow(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent = await client.agents.create(name="coder", model="ultimate", system="Original.")
    env = await client.environments.create(name="sandbox")
    doc = server.add_file(b"a,b\n1,2\n", "data.csv")
    repo: GitHubRepositoryResourceParams = {
        "type": "github_repository",
        "url": "https://github.com/acme/app",
        "checkout": {"type": "branch", "name": "main"},
        "mount_path": "/workspace/app",
        "authorization_token": "ghp_secret_token_123",
    }
    session = await client.sessions.create(
        agent={
            "type": "agent_with_overrides",
            "id": agent.id,
            "system": "Overridden.",
            "model": "auto",
            "tools": [{"type": "agent_toolset_20260401", "enabled_tools": ["Read"]}],
        },
        environment_id=env.id,
        title="everything",
        metadata={"ticket": "OPS-1"},
        resources=[
            repo,
            {"type": "file", "file_id": doc["id"], "mount_path": "/data/data.csv"},
            {"type": "memory_store", "memory_store_id": "memstore_1", "access": "read_only"},
        ],
        vault_ids=["vault_1"],
        memory_store_ids=["memstore_1"],
        environment_variables={"MODE": "test"},
        budget={"type": "limit", "max_credit_cost": "5.00"},
    )
    assert isinstance(session, Session)
    assert session.agent_id == agent.id
    assert isinstance(session.agent, Agent)
    assert session.agent.system == "Overridden."
    assert session.agent.model == "auto"
    assert session.agent.tools == ({"type": "agent_toolset_20260401", "enabled_tools": ["Read"]},)
    assert session.title == "everything"
    assert session.metadata == {"ticket": "OPS-1"}
    assert session.vault_ids == ("vault_1",)
    assert session.memory_store_ids == ("memstore_1",)
    assert session.environment_variables == {"MODE": "test"}
    assert "MODE" not in repr(session)  # variable values may be secrets
    assert session.budget == {"type": "limit", "max_credit_cost": "5.00"}
    kinds = [r.type for r in session.resources]
    assert kinds == ["github_repository", "file", "memory_store"]
    github, file, memory = session.resources
    assert all(isinstance(r, SessionResource) for r in session.resources)
    assert github.url == "https://github.com/acme/app"
    assert github.checkout == {"type": "branch", "name": "main"}
    assert github.mount_path == "/workspace/app"
    assert file.file_id == doc["id"]
    assert memory.memory_store_id == "memstore_1"
    assert memory.access == "read_only"
    # The token went to the server, and never comes back.
    assert server.resource_secret(session.id, github.id) == "ghp_secret_token_123"
    assert "ghp_secret_token_123" not in json.dumps(dict(session.raw))


async def test_session_create_pins_an_agent_version(
    client: QoderClient, server: FakeQoderServer
) -> None:
    agent = await client.agents.create(name="a", model="ultimate", system="v1")
    await client.agents.update(agent.id, version=1, system="v2")
    env = await client.environments.create(name="e")
    session = await client.sessions.create(
        agent={"type": "agent", "id": agent.id, "version": 1}, environment_id=env.id
    )
    assert session.agent is not None
    assert session.agent.version == 1
    assert session.agent.system == "v1"


async def test_session_update_with_the_documented_fields(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    updated = await client.sessions.update(
        session_id,
        title="renamed",
        metadata={"k": "v"},
        agent={"model": "auto", "system": "Be brief."},
        environment_variables={"MODE": "prod"},
        budget={"type": "limit", "max_credit_cost": "1.00"},
        vault_ids=["vault_2"],
    )
    assert updated.title == "renamed"
    assert updated.metadata == {"k": "v"}
    assert updated.agent is not None
    assert updated.agent.model == "auto"
    assert updated.agent.system == "Be brief."
    assert updated.environment_variables == {"MODE": "prod"}
    assert updated.budget == {"type": "limit", "max_credit_cost": "1.00"}
    assert updated.vault_ids == ("vault_2",)
    last = server.stored_events(session_id)[-1]
    assert last["type"] == "session.updated"
    # Fields left out are not sent (and so not changed).
    await client.sessions.update(session_id, title="again")
    body = server.requests[-1].json()
    assert body == {"title": "again"}
    assert (await client.sessions.retrieve(session_id)).vault_ids == ("vault_2",)


async def test_session_resources(client: QoderClient, server: FakeQoderServer) -> None:
    session_id = str(server.add_session()["id"])
    doc = server.add_file(b"hello", "notes.txt")
    # The official SDK's keyword form...
    added = await client.sessions.resources.add(
        session_id, type="file", file_id=doc["id"], mount_path="/data/notes.txt"
    )
    assert isinstance(added, SessionResource)
    assert added.id
    assert (added.type, added.file_id, added.mount_path) == ("file", doc["id"], "/data/notes.txt")
    # ... or a whole resource object.
    repo = await client.sessions.resources.add(
        session_id,
        {
            "type": "github_repository",
            "url": "https://github.com/acme/lib",
            "checkout": {"type": "commit", "sha": "abc123"},
            "authorization_token": "ghp_first_token",
        },
    )
    assert repo.checkout == {"type": "commit", "sha": "abc123"}
    listed = [r.id async for r in client.sessions.resources.list(session_id, limit=1)]
    assert listed == [added.id, repo.id]
    got = await client.sessions.resources.retrieve(session_id, repo.id)
    assert got.url == "https://github.com/acme/lib"
    rotated = await client.sessions.resources.update(
        session_id, repo.id, authorization_token="ghp_second_token"
    )
    assert rotated.id == repo.id
    assert server.resource_secret(session_id, repo.id) == "ghp_second_token"
    deleted = await client.sessions.resources.delete(session_id, added.id)
    assert deleted == Deleted(id=added.id, type="session_resource_deleted")
    with pytest.raises(NotFoundError):
        await client.sessions.resources.retrieve(session_id, added.id)
    session = await client.sessions.retrieve(session_id)
    assert [r.id for r in session.resources] == [repo.id]


# --------------------------------------------------------------------------- agents, envs, models


async def test_agents_tools_mcp_servers_skills_and_versions(
    client: QoderClient, server: FakeQoderServer
) -> None:
    tools: list[Any] = [
        {"type": "agent_toolset_20260401", "enabled_tools": ["Bash", "Read"]},
        {
            "type": "custom",
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"type": "mcp_toolset", "mcp_server_name": "docs"},
    ]
    mcp_servers: list[Any] = [{"type": "url", "name": "docs", "url": "https://mcp.example/sse"}]
    skills: list[Any] = [{"type": "custom", "skill_id": "skill_1", "version": "3"}]
    agent = await client.agents.create(
        name="full",
        model={"id": "ultimate"},
        system="Help.",
        tools=tools,
        mcp_servers=mcp_servers,
        skills=skills,
        metadata={"team": "bots"},
    )
    assert agent.model == "ultimate"
    assert list(agent.tools) == tools
    assert list(agent.mcp_servers) == mcp_servers
    assert list(agent.skills) == skills
    assert agent.version == 1

    v2 = await client.agents.update(agent.id, version=1, skills=[], description="second")
    assert (v2.version, v2.skills, v2.description) == (2, (), "second")
    assert v2.tools == agent.tools  # not sent, not changed
    with pytest.raises(ConflictError):
        await client.agents.update(agent.id, version=1, description="a stale edit")
    versions = [a async for a in client.agents.versions.list(agent.id, limit=1)]
    assert [v.version for v in versions] == [2, 1]
    assert all(isinstance(v, Agent) and v.id == agent.id for v in versions)


async def test_environments_update_and_delete(client: QoderClient) -> None:
    env = await client.environments.create(name="e", description="first")
    renamed = await client.environments.update(
        env.id, name="renamed", config={"type": "cloud", "networking": {"type": "limited"}}
    )
    assert renamed.name == "renamed"
    assert renamed.description == "first"
    assert renamed.config["networking"] == {"type": "limited"}
    gone = await client.environments.delete(env.id)
    assert gone == Deleted(id=env.id, type="environment_deleted")
    with pytest.raises(NotFoundError):
        await client.environments.retrieve(env.id)


async def test_models_list(client: QoderClient) -> None:
    models = [m async for m in client.models.list()]
    assert {m.id for m in models} == {"ultimate", "auto"}
    assert all(isinstance(m, ModelInfo) and m.is_enabled for m in models)
    assert {m.display_name for m in models} == {"Ultimate", "Auto"}


# --------------------------------------------------------------------------- raw responses


@pytest.mark.both_transports
async def test_raw_responses_on_every_resource(
    client: QoderClient, server: FakeQoderServer
) -> None:
    session_id = await multiagent_session(client, server)
    [thread] = server.threads(session_id)
    file = server.add_file(b"x", "x.txt")
    agent = await client.agents.create(name="a", model="auto")
    env = await client.environments.create(name="e")

    raw = await client.sessions.with_raw_response.retrieve(session_id)
    assert isinstance(raw, RawResponse)
    assert raw.status_code == 200
    assert raw.request_id is not None
    assert raw.request_id.startswith("req_")
    assert raw.headers["x-request-id"] == raw.request_id
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.body["id"] == session_id
    session = await raw.parse()
    assert isinstance(session, Session)
    assert session.id == session_id

    calls = [
        (client.sessions.with_raw_response.list(), list),
        (client.sessions.events.with_raw_response.list(session_id), list),
        (client.sessions.with_raw_response.events.list(session_id), list),
        (
            client.sessions.threads.with_raw_response.retrieve(session_id, thread["id"]),
            SessionThread,
        ),
        (client.sessions.threads.events.with_raw_response.list(session_id, thread["id"]), list),
        (client.sessions.resources.with_raw_response.list(session_id), list),
        (client.agents.with_raw_response.retrieve(agent.id), Agent),
        (client.agents.versions.with_raw_response.list(agent.id), list),
        (client.environments.with_raw_response.delete(env.id), Deleted),
        (client.files.with_raw_response.retrieve_metadata(file["id"]), FileMetadata),
        (client.models.with_raw_response.list(), list),
    ]
    for call, kind in calls:
        answer = await call
        assert isinstance(answer, RawResponse)
        assert answer.status_code == 200
        assert answer.request_id == answer.headers["x-request-id"]
        assert isinstance(await answer.parse(), kind)

    created = await client.sessions.with_raw_response.create(
        agent=agent.id, environment_id=(await client.environments.create(name="e2")).id
    )
    assert created.status_code == 201
    sent = await client.sessions.events.with_raw_response.send(session_id, UserMessage("again"))
    assert sent.status_code == 202
    accepted = await sent.parse()
    assert accepted.last_event_id == server.user_messages(session_id)[-1]["id"]
    await server.wait_idle(session_id)

    with pytest.raises(TypeError, match="no raw response"):
        await client.sessions.events.with_raw_response.stream(session_id)
    with pytest.raises(AttributeError):
        client.sessions.with_raw_response.nothing_like_this  # noqa: B018


async def test_raw_response_parse_names_a_wrong_field(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    bad = json.dumps({"id": session_id, "vault_ids": "vault_1"}).encode()
    server.faults.respond_next = [CannedResponse("GET", r"/sessions/", 200, JSON, bad)]
    raw = await client.sessions.with_raw_response.retrieve(session_id)
    assert raw.status_code == 200  # the answer itself arrived
    with pytest.raises(APIResponseValidationError, match="vault_ids"):
        await raw.parse()


# --------------------------------------------------------------------------- per-call options


@pytest.mark.both_transports
async def test_every_write_takes_an_idempotency_key(
    client: QoderClient, server: FakeQoderServer
) -> None:
    session_id = await multiagent_session(client, server)
    [thread] = server.threads(session_id)
    doc = server.add_file(b"x", "x.txt")
    agent = await client.agents.create(name="a", model="auto", idempotency_key="k-agent")
    again = await client.agents.create(name="a", model="auto", idempotency_key="k-agent")
    assert again.id == agent.id  # replayed, not created twice
    env = await client.environments.create(name="e", idempotency_key="k-env")
    writes = {
        "k-update": client.sessions.update(session_id, title="t", idempotency_key="k-update"),
        "k-thread": client.sessions.threads.archive(
            session_id, thread["id"], idempotency_key="k-thread"
        ),
        "k-res": client.sessions.resources.add(
            session_id, type="file", file_id=doc["id"], idempotency_key="k-res"
        ),
        "k-agent-up": client.agents.update(agent.id, description="d", idempotency_key="k-agent-up"),
        "k-env-up": client.environments.update(env.id, name="n", idempotency_key="k-env-up"),
        "k-cancel": client.sessions.cancel(session_id, idempotency_key="k-cancel"),
        "k-archive": client.sessions.archive(session_id, idempotency_key="k-archive"),
        "k-file-del": client.files.delete(doc["id"], idempotency_key="k-file-del"),
        "k-env-del": client.environments.delete(env.id, idempotency_key="k-env-del"),
        "k-agent-archive": client.agents.archive(agent.id, idempotency_key="k-agent-archive"),
    }
    for key, call in writes.items():
        await call
        assert server.requests[-1].headers["idempotency-key"] == key


@pytest.mark.both_transports
async def test_per_call_options_on_the_new_methods(
    client: QoderClient, server: FakeQoderServer
) -> None:
    session_id = await multiagent_session(client, server)
    threads = client.sessions.threads.list(
        session_id, extra_headers={"X-Trace": "t1"}, extra_query={"order": "desc"}
    )
    assert [t async for t in threads]
    request = server.requests[-1]
    assert request.headers["x-trace"] == "t1"
    assert request.query["order"] == ["desc"]
    agent = await client.agents.create(name="a", model="auto")
    updated = await client.agents.update(
        agent.id, extra_body={"description": "from extra_body"}, timeout=30.0
    )
    assert updated.description == "from extra_body"


# --------------------------------------------------------------------------- 413 and 529


@pytest.fixture(params=["aiohttp", "httpx"])
async def tiny(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[FakeQoderServer, QoderClient]]:
    """A fake that takes bodies up to 2 KiB, and a client on each transport."""
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(FakeQoderServer(max_body_bytes=2048))
        http_client = None
        if request.param == "httpx":
            http_client = await stack.enter_async_context(httpx.AsyncClient())
        client = await stack.enter_async_context(
            QoderClient(token=server.token, base_url=server.base_url, http_client=http_client)
        )
        yield server, client


async def test_a_body_too_large_is_request_too_large(
    tiny: tuple[FakeQoderServer, QoderClient],
) -> None:
    server, client = tiny
    session_id = str(server.add_session()["id"])
    with pytest.raises(RequestTooLargeError) as excinfo:
        await client.sessions.events.send(session_id, UserMessage("x" * 4096))
    assert excinfo.value.status_code == 413
    assert excinfo.value.error_type == "request_too_large"
    assert excinfo.value.request_id is not None
    assert server.user_messages(session_id) == []
    with pytest.raises(RequestTooLargeError):
        await client.files.upload(b"y" * 4096, filename="big.bin")
    assert len([r for r in server.requests if r.path.endswith("/files")]) == 1  # not retried


async def test_529_is_overloaded_and_retried_when_safe(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.throttle_status = 529
    server.faults.retry_after = 0.0
    server.faults.throttle_first = 1
    session = await client.sessions.retrieve(session_id)  # a GET: retried, then fine
    assert session.id == session_id
    assert server.fault_counts["throttle_first"] == 1

    server.faults.throttle_first = 1
    with pytest.raises(OverloadedError) as excinfo:
        [m async for m in client.with_options(retry=RetryPolicy(max_retries=0)).models.list()]
    assert excinfo.value.status_code == 529
    assert excinfo.value.error_type == "overloaded_error"
    assert excinfo.value.retry_after == 0.0


# --------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", r"/threads/sthr_1$", {"id": "sthr_1", "stats": {"active_seconds": "1s"}},
         "stats.active_seconds"),
        ("GET", r"/threads/sthr_1$", {"id": "sthr_1", "agent": "researcher"}, "agent"),
        ("GET", r"/resources/r_1$", {"id": "r_1", "checkout": "main"}, "checkout"),
        ("GET", r"/files/file_1$", {"id": "file_1", "size_bytes": "12"}, "size_bytes"),
        ("GET", r"/files/file_1$", {"id": "file_1", "downloadable": "yes"}, "downloadable"),
        ("GET", r"/sessions/s_1$", {"id": "s_1", "resources": [{"id": 5}]}, "resources[0].id"),
        ("GET", r"/sessions/s_1$", {"id": "s_1", "agent": {"id": "a", "tools": "Bash"}},
         "agent.tools"),
        ("GET", r"/sessions/s_1$", {"id": "s_1", "memory_store_ids": ["m", 2]},
         "memory_store_ids[1]"),
    ],
)  # fmt: skip
async def test_wrong_types_in_answers_name_the_field(
    client: QoderClient,
    server: FakeQoderServer,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    server.faults.respond_next = [
        CannedResponse(method, path, 200, JSON, json.dumps(body).encode())
    ]
    calls = {
        r"/threads/sthr_1$": lambda: client.sessions.threads.retrieve("s_1", "sthr_1"),
        r"/resources/r_1$": lambda: client.sessions.resources.retrieve("s_1", "r_1"),
        r"/files/file_1$": lambda: client.files.retrieve_metadata("file_1"),
        r"/sessions/s_1$": lambda: client.sessions.retrieve("s_1"),
    }
    with pytest.raises(APIResponseValidationError) as excinfo:
        await calls[path]()
    assert f"'{field}'" in str(excinfo.value)


async def test_a_wrong_item_in_a_models_page_is_a_typed_error(
    client: QoderClient, server: FakeQoderServer
) -> None:
    page = {"data": [{"id": "ultimate", "is_enabled": "yes"}], "has_more": False}
    server.faults.respond_next = [
        CannedResponse("GET", r"/models$", 200, JSON, json.dumps(page).encode())
    ]
    with pytest.raises(APIResponseValidationError, match="is_enabled"):
        [m async for m in client.models.list()]
