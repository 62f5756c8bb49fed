"""FakeQoderServer against plain HTTP clients: endpoints, SSE, scripts, dialects, faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from conftest import eventually, held_message
from fake_dialects import OldWire

from qoder_async.testing import (
    CannedResponse,
    Dialect,
    FakeQoderServer,
    Faults,
    Script,
    StopReasonJSON,
    TurnContext,
    multiagent_script,
    subagent_tool_script,
    tool_script,
)

DEFAULT_ORDER = [
    "user.message",
    "session.status_running",
    "span.model_request_start",
    "agent.thinking",
    "agent.tool_use",
    "agent.tool_result",
    "agent.message",
    "span.model_request_end",
    "session.status_idle",
]

# --------------------------------------------------------------------------- SSE helpers


@dataclass
class Frame:
    """One parsed SSE frame (a comment-only frame has ``comment`` set)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)

    @property
    def is_event(self) -> bool:
        return self.data is not None and self.event not in ("heartbeat", "ping")


def parse_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """Complete frames in ``buffer`` and the unparsed rest."""
    frames = []
    while b"\n\n" in buffer:
        block, buffer = buffer.split(b"\n\n", 1)
        frame = Frame()
        data: list[str] = []
        for line in block.decode(errors="replace").split("\n"):
            if line.startswith(":"):
                frame.comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "retry":
                frame.retry = int(value)
        frame.data = "\n".join(data) if data else None
        frames.append(frame)
    return frames, buffer


class SSE:
    """Reads an SSE response incrementally."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self.raw = b""
        self.rest = b""
        self.ended = False
        self.error: Exception | None = None
        self._chunks = response.aiter_bytes()

    def _feed(self, chunk: bytes) -> None:
        self.raw += chunk
        frames, self.rest = parse_frames(self.rest + chunk)
        self.frames.extend(frames)

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.is_event]

    async def until(self, predicate: Callable[[SSE], bool], timeout: float = 5.0) -> SSE:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    raise AssertionError("stream ended before the condition held") from None
                self._feed(chunk)
        return self

    async def to_end(self, timeout: float = 5.0) -> SSE:
        """Read until EOF (clean: ``error`` None) or a transport error (``error`` set)."""
        async with asyncio.timeout(timeout):
            try:
                async for chunk in self._chunks:
                    self._feed(chunk)
            except httpx.TransportError as exc:
                self.error = exc
        self.ended = True
        return self


def idle_end(sse: SSE) -> bool:
    """A turn-ending idle (not requires_action) has arrived."""
    return any(
        f.event == "session.status_idle" and f.json()["stop_reason"]["type"] != "requires_action"
        for f in sse.events
    )


def has(event_type: str, count: int = 1) -> Callable[[SSE], bool]:
    return lambda sse: sum(f.event == event_type for f in sse.events) >= count


def heartbeats(count: int) -> Callable[[SSE], bool]:
    return lambda sse: (
        sum(f.comment == "heartbeat" or f.event in ("heartbeat", "ping") for f in sse.frames)
        >= count
    )


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient,
    session_id: str,
    *,
    last_event_id: str | None = None,
    deltas: Sequence[str] = (),
) -> AsyncIterator[SSE]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    params = [("event_deltas[]", d) for d in deltas]
    async with http.stream(
        "GET", f"sessions/{session_id}/events/stream", headers=headers, params=params
    ) as response:
        assert response.status_code == 200, response.status_code
        yield SSE(response)


# --------------------------------------------------------------------------- fixtures


@asynccontextmanager
async def client_for(server: FakeQoderServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.base_url + "/",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10.0,
        verify=False,  # plain http on loopback; skips building a CA bundle per client
    ) as http:
        yield http


@pytest.fixture
async def server() -> AsyncIterator[FakeQoderServer]:
    async with FakeQoderServer(heartbeat_interval=0.05, seed=7) as srv:
        yield srv


@pytest.fixture
async def http(server: FakeQoderServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(server) as client:
        yield client


def user_message(text: str = "hello") -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


async def send(
    http: httpx.AsyncClient, session_id: str, *events: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    return await http.post(f"sessions/{session_id}/events", json={"events": list(events)}, **kwargs)


async def run_turn(
    http: httpx.AsyncClient, server: FakeQoderServer, session_id: str, text: str = "hello"
) -> dict[str, Any]:
    response = await send(http, session_id, user_message(text))
    assert response.status_code == 202, response.text
    await server.wait_idle(session_id)
    event: dict[str, Any] = response.json()["data"][0]
    return event


def gated(gate: asyncio.Event) -> Script:
    """A script that opens a model request span and waits for ``gate``."""

    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        ctx.emit("span.model_request_start")
        await gate.wait()
        await ctx.message("released")
        return None

    return script


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["type"] == "error"
    error: dict[str, Any] = body["error"]
    return error


# --------------------------------------------------------------------------- resources


async def test_environment_endpoints(http: httpx.AsyncClient) -> None:
    created = await http.post("environments", json={"name": "dev", "metadata": {"team": "a"}})
    assert created.status_code == 201
    assert re.fullmatch(r"req_[0-9a-f]+", created.headers["x-request-id"])
    env = created.json()
    assert re.fullmatch(r"env_[0-9a-z]{26}", env["id"])
    assert env["type"] == "environment"
    assert env["config"] == {"type": "cloud"}
    assert env["status"] == "ready"
    assert env["archived_at"] is None
    assert env["metadata"] == {"team": "a"}

    fetched = await http.get(f"environments/{env['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == env

    updated = await http.post(f"environments/{env['id']}", json={"name": "prod"})
    assert updated.status_code == 200
    assert updated.json()["name"] == "prod"

    listed = await http.get("environments")
    assert [e["id"] for e in listed.json()["data"]] == [env["id"]]

    archived = await http.post(f"environments/{env['id']}/archive")
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert archived.json()["status"] == "archived"
    assert (await http.get("environments")).json()["data"] == []
    shown = await http.get("environments", params={"include_archived": "true"})
    assert [e["id"] for e in shown.json()["data"]] == [env["id"]]


async def test_agent_endpoints(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "agents",
        json={
            "name": "coder",
            "model": {"id": "ultimate"},
            "instructions": "Be brief.",
            "tools": [{"type": "agent_toolset_20260401"}],
        },
    )
    assert created.status_code == 201
    agent = created.json()
    assert re.fullmatch(r"agent_[0-9a-z]{26}", agent["id"])
    assert agent["type"] == "agent"
    assert agent["version"] == 1
    assert agent["system"] == agent["instructions"] == "Be brief."
    assert agent["model"] == {"id": "ultimate"}
    assert agent["archived_at"] is None

    updated = await http.post(f"agents/{agent['id']}", json={"name": "coder2", "version": 1})
    assert updated.status_code == 200
    assert updated.json()["version"] == 2
    assert updated.json()["name"] == "coder2"
    old = await http.get(f"agents/{agent['id']}", params={"version": "1"})
    assert old.json()["name"] == "coder"
    stale = await http.post(f"agents/{agent['id']}", json={"name": "x", "version": 1})
    assert stale.status_code == 409
    assert error_of(stale)["type"] == "conflict_error"

    versions = await http.get(f"agents/{agent['id']}/versions")
    assert [v["version"] for v in versions.json()["data"]] == [2, 1]
    assert [a["id"] for a in (await http.get("agents")).json()["data"]] == [agent["id"]]

    archived = await http.post(f"agents/{agent['id']}/archive")
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert (await http.get("agents")).json()["data"] == []
    missing_model = await http.post("agents", json={"name": "x"})
    assert missing_model.status_code == 400
    assert error_of(missing_model)["param"] == "model"


async def test_session_endpoints(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    env = server.add_environment()
    agent = server.add_agent(system="You are a test.")
    created = await http.post(
        "sessions",
        json={
            "agent": {"type": "agent", "id": agent["id"], "version": 1},
            "environment_id": env["id"],
            "title": "first",
            "metadata": {"k": "v"},
        },
    )
    assert created.status_code == 201
    session = created.json()
    assert re.fullmatch(r"sess_[0-9a-z]{26}", session["id"])
    assert session["type"] == "session"
    assert session["status"] == "idle"
    assert session["agent"]["id"] == session["agent_id"] == agent["id"]
    assert session["agent"]["system"] == "You are a test."
    assert session["environment_id"] == env["id"]
    assert session["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert session["archived_at"] is None

    second = await http.post("sessions", json={"agent": agent["id"], "environment_id": env["id"]})
    assert second.status_code == 201
    third = await http.post(
        "sessions", json={"agent": {"id": agent["id"]}, "environment_id": env["id"]}
    )
    assert third.status_code == 201

    listed = (await http.get("sessions")).json()
    assert [s["id"] for s in listed["data"]] == [
        third.json()["id"],
        second.json()["id"],
        session["id"],
    ]
    ascending = (await http.get("sessions", params={"order": "asc"})).json()
    assert ascending["data"][0]["id"] == session["id"]

    fetched = await http.get(f"sessions/{session['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["title"] == "first"
    updated = await http.post(f"sessions/{session['id']}", json={"title": "renamed"})
    assert updated.status_code == 200
    assert updated.json()["title"] == "renamed"

    cancel = await http.post(f"sessions/{session['id']}/cancel")
    assert cancel.status_code == 200
    assert cancel.json() == {"id": session["id"], "type": "session", "status": "canceling"}

    archived = await http.post(f"sessions/{session['id']}/archive")
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert archived.json()["id"] == session["id"]
    visible = [s["id"] for s in (await http.get("sessions")).json()["data"]]
    assert session["id"] not in visible
    everything = await http.get("sessions", params={"include_archived": "true"})
    assert session["id"] in [s["id"] for s in everything.json()["data"]]
    rejected = await send(http, session["id"], user_message())
    assert rejected.status_code == 400
    assert error_of(rejected)["type"] == "invalid_request_error"

    deleted = await http.delete(f"sessions/{second.json()['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": second.json()["id"], "type": "session_deleted"}
    gone = await http.get(f"sessions/{second.json()['id']}")
    assert gone.status_code == 404


async def test_session_create_errors(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    env = server.add_environment()
    agent = server.add_agent()
    unknown_agent = await http.post(
        "sessions", json={"agent": "agent_nope", "environment_id": env["id"]}
    )
    assert unknown_agent.status_code == 404
    assert error_of(unknown_agent)["type"] == "not_found_error"
    unknown_env = await http.post("sessions", json={"agent": agent["id"], "environment_id": "x"})
    assert unknown_env.status_code == 404
    missing = await http.post("sessions", json={"environment_id": env["id"]})
    assert missing.status_code == 400
    assert error_of(missing)["param"] == "agent"
    no_env = await http.post("sessions", json={"agent": agent["id"]})
    assert no_env.status_code == 400
    assert error_of(no_env)["param"] == "environment_id"


async def test_models_endpoint(http: httpx.AsyncClient) -> None:
    response = await http.get("models")
    assert response.status_code == 200
    assert {m["id"] for m in response.json()["data"]} >= {"ultimate"}


# --------------------------------------------------------------------------- errors


async def test_authentication(server: FakeQoderServer) -> None:
    session = server.add_session()
    async with httpx.AsyncClient(base_url=server.base_url + "/") as anonymous:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"x-api-key": server.token},
            {"Authorization": server.token},
        ):
            response = await anonymous.get("sessions", headers=headers)
            assert response.status_code == 401
            assert error_of(response) == {
                "type": "authentication_error",
                "message": "Invalid API key or token.",
            }
            assert response.headers["x-request-id"].startswith("req_")
        stream = await anonymous.get(f"sessions/{session['id']}/events/stream")
        assert stream.status_code == 401


async def test_not_found_json_and_plain_text(http: httpx.AsyncClient) -> None:
    response = await http.get("sessions/sess_unknown")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert error_of(response)["type"] == "not_found_error"
    for path in ("nope", "sessions/sess_x/turns/turn_x/resolve", "/elsewhere"):
        plain = await http.post(path) if "resolve" in path else await http.get(path)
        assert plain.status_code == 404
        assert plain.text == "404 page not found"
        assert plain.headers["content-type"].startswith("text/plain")
        assert plain.headers["x-request-id"].startswith("req_")


async def test_bad_requests(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    malformed = await http.post(
        "environments", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert error_of(malformed)["type"] == "invalid_request_error"
    assert (await http.post("environments", json={"description": "no name"})).status_code == 400
    assert (await http.post("environments", json=["not", "an", "object"])).status_code == 400
    assert (await http.post(f"sessions/{sid}/events", json={"events": []})).status_code == 400
    assert (await http.post(f"sessions/{sid}/events", json={})).status_code == 400
    for event in (
        {"type": "agent.message", "content": [{"type": "text", "text": "x"}]},
        {"type": "session.status_idle"},
        {"type": "user.message"},
        {"type": "user.message", "content": []},
        {"type": "user.message", "content": [{"type": "text"}]},
        {"content": "no type"},
        {"type": "user.custom_tool_result"},
        {"type": "user.tool_confirmation", "tool_use_id": "evt_1", "result": "maybe"},
    ):
        response = await send(http, sid, event)
        assert response.status_code == 400, event
        assert error_of(response)["type"] == "invalid_request_error"
    assert server.stored_events(sid) == []
    for params in (
        {"after_id": "a", "before_id": "b"},
        {"page": "any", "before_id": "b"},  # the API refuses a cursor next to page=
        {"page": "any", "after_id": "a"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "many"},
        {"order": "sideways"},
        {"page": "!!!"},
        {"after_id": "env_unknown"},
        {"include_archived": "perhaps"},
    ):
        response = await http.get("environments", params=params)
        assert response.status_code == 400, params
        assert error_of(response)["type"] == "invalid_request_error"
    bad_delta = await http.get(
        f"sessions/{sid}/events/stream", params={"event_deltas[]": "agent.tool_use"}
    )
    assert bad_delta.status_code == 400


async def test_busy_conflict_differs_from_idempotency_conflict(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    gate = asyncio.Event()
    server.script = gated(gate)
    sid = server.add_session()["id"]
    first = await send(http, sid, user_message("one"), headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    assert server.session(sid)["status"] == "running"
    busy = await send(http, sid, user_message("two"))
    assert busy.status_code == 409
    reused = await send(http, sid, user_message("three"), headers={"Idempotency-Key": "k1"})
    assert reused.status_code == 409
    assert error_of(busy)["type"] == error_of(reused)["type"] == "conflict_error"
    assert "session is running" in error_of(busy)["message"]
    assert "Idempotency-Key reused" in error_of(reused)["message"]
    assert len(server.user_messages(sid)) == 1
    gate.set()
    await server.wait_idle(sid)
    assert server.session(sid)["status"] == "idle"


async def test_idempotent_replay(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    first = await send(http, sid, user_message(), headers={"Idempotency-Key": "same"})
    await server.wait_idle(sid)
    again = await send(http, sid, user_message(), headers={"Idempotency-Key": "same"})
    assert again.status_code == first.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(server.user_messages(sid)) == 1

    headers = {"X-Idempotency-Key": "env-1"}
    env_a = await http.post("environments", json={"name": "e"}, headers=headers)
    env_b = await http.post("environments", json={"name": "e"}, headers=headers)
    assert env_a.status_code == env_b.status_code == 201
    assert env_a.json()["id"] == env_b.json()["id"]
    # A failed request is not remembered: the same key may be retried for real.
    bad = await http.post("environments", json={}, headers={"Idempotency-Key": "bad"})
    assert bad.status_code == 400
    good = await http.post("environments", json={}, headers={"Idempotency-Key": "bad"})
    assert good.status_code == 400


# --------------------------------------------------------------------------- pagination


async def test_pagination_after_id_and_page_cursor(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    ids = [server.add_environment(name=f"env-{i}")["id"] for i in range(130)]

    seen: list[str] = []
    params: dict[str, str] = {"limit": "100", "order": "asc"}
    pages = 0
    while True:
        page = (await http.get("environments", params=params)).json()
        pages += 1
        seen += [e["id"] for e in page["data"]]
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            assert page["next_page"] is None
            break
        params["after_id"] = page["last_id"]
    assert pages == 2
    assert seen == ids

    default = (await http.get("environments")).json()
    assert len(default["data"]) == 20
    assert default["data"][0]["id"] == ids[-1]  # newest first by default
    cursor_seen: list[str] = []
    query: dict[str, str] = {"limit": "50"}
    while True:
        page = (await http.get("environments", params=query)).json()
        cursor_seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        query = {"limit": "50", "page": page["next_page"]}
    assert cursor_seen == ids[::-1]

    before = (
        await http.get("environments", params={"order": "asc", "before_id": ids[30], "limit": "10"})
    ).json()
    assert [e["id"] for e in before["data"]] == ids[20:30]
    assert before["has_more"] is True
    back = (
        await http.get("environments", params={"page": before["next_page"], "order": "asc"})
    ).json()
    assert [e["id"] for e in back["data"]][-1] == ids[19]


async def test_event_history_list(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    await run_turn(http, server, sid, "again")
    stored = server.stored_events(sid)
    assert len(stored) == 2 * len(DEFAULT_ORDER)
    listed = (await http.get(f"sessions/{sid}/events", params={"limit": "100"})).json()
    assert listed["data"] == [server.dialect.render(e) for e in stored]
    assert listed["has_more"] is False
    walked: list[str] = []
    query: dict[str, str] = {"limit": "5"}
    while True:
        page = (await http.get(f"sessions/{sid}/events", params=query)).json()
        walked += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        query = {"limit": "5", "page": page["next_page"]}
    assert walked == [e["id"] for e in stored]
    assert walked == sorted(walked)  # ids sort in time order
    desc = (await http.get(f"sessions/{sid}/events", params={"order": "desc"})).json()
    assert desc["data"][0]["id"] == stored[-1]["id"]
    messages = await http.get(f"sessions/{sid}/events", params={"types[]": "agent.message"})
    assert [e["type"] for e in messages.json()["data"]] == ["agent.message"] * 2
    two = await http.get(f"sessions/{sid}/events", params={"type": "user.message,agent.message"})
    assert len(two.json()["data"]) == 4
    for event in stored:
        assert event["session_id"] == sid
        assert event["schema_version"] == "1.0"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", event["processed_at"])
        assert re.fullmatch(r"evt_[0-9a-f]+", event["id"])


# --------------------------------------------------------------------------- turns


async def test_default_turn_order_and_turn_ids(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.dialect.turn_ids = True
    sid = server.add_session()["id"]
    echo = await run_turn(http, server, sid, "what is in the repo?")
    assert echo["type"] == "user.message"
    turn_id = echo["turn_id"]
    assert re.fullmatch(r"turn_[0-9a-z]{26}", turn_id)
    events = server.turn_events(sid, turn_id)
    assert [e["type"] for e in events] == DEFAULT_ORDER
    assert events == server.stored_events(sid)
    by_type = {e["type"]: e for e in events}
    assert by_type["agent.tool_result"]["tool_use_id"] == by_type["agent.tool_use"]["id"]
    assert by_type["agent.tool_use"]["name"] == "Read"
    assert by_type["agent.tool_result"]["content"][0]["type"] == "text"
    end = by_type["span.model_request_end"]
    assert end["model_request_start_id"] == by_type["span.model_request_start"]["id"]
    assert end["model_usage"]["input_tokens"] > 0
    assert by_type["agent.thinking"]["thinking"] == "Let me look at that."
    assert "what is in the repo?" in by_type["agent.message"]["content"][0]["text"]
    assert by_type["session.status_idle"]["stop_reason"] == {"type": "end_turn"}
    usage = server.session(sid)["usage"]
    assert usage["input_tokens"] == end["model_usage"]["input_tokens"]

    second = await run_turn(http, server, sid, "more")
    assert second["turn_id"] != turn_id
    assert len(server.turn_events(sid, second["turn_id"])) == len(DEFAULT_ORDER)
    assert server.session(sid)["usage"]["input_tokens"] > usage["input_tokens"]


async def test_string_content_and_initial_events(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    response = await send(http, sid, {"type": "user.message", "content": "plain"})
    assert response.status_code == 202
    assert response.json()["data"][0]["content"] == [{"type": "text", "text": "plain"}]
    await server.wait_idle(sid)

    env, agent = server.add_environment(), server.add_agent()
    created = await http.post(
        "sessions",
        json={
            "agent": agent["id"],
            "environment_id": env["id"],
            "initial_events": [user_message("from the start")],
        },
    )
    assert created.status_code == 201
    started = created.json()["id"]
    await server.wait_idle(started)
    assert [e["type"] for e in server.stored_events(started)] == DEFAULT_ORDER


async def test_define_outcome_turn(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.dialect.turn_ids = True
    sid = server.add_session()["id"]
    outcome = {
        "type": "user.define_outcome",
        "description": "All tests pass",
        "rubric": {"type": "text", "content": "green CI"},
    }
    response = await send(http, sid, outcome)
    assert response.status_code == 202
    await server.wait_idle(sid)
    events = server.turn_events(sid, response.json()["data"][0]["turn_id"])
    assert [e["type"] for e in events] == [
        "user.define_outcome",
        "session.status_running",
        "span.outcome_evaluation_start",
        "span.outcome_evaluation_ongoing",
        "span.outcome_evaluation_end",
        "agent.message",
        "session.status_idle",
    ]
    end = events[4]
    assert end["outcome_evaluation_start_id"] == events[2]["id"]
    assert end["result"] == "satisfied"
    assert "All tests pass" in events[5]["content"][0]["text"]


async def test_requires_action_round_trip(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.dialect.turn_ids = True
    server.script = tool_script("lookup", {"q": "answer"})
    sid = server.add_session()["id"]
    async with open_stream(http, sid) as sse:
        sent = await send(http, sid, user_message("use the tool"))
        await sse.until(has("session.status_idle"))
        idle = next(f for f in sse.events if f.event == "session.status_idle").json()
        use_frame = next(f for f in sse.events if f.event == "agent.custom_tool_use")
        use = {**use_frame.json(), "id": use_frame.id}
        assert use["name"] == "lookup"
        assert use["input"] == {"q": "answer"}
        assert idle["stop_reason"] == {"type": "requires_action", "event_ids": [use["id"]]}
        assert server.session(sid)["status"] == "idle"
        assert (await send(http, sid, user_message("meanwhile"))).status_code == 409
        wrong = {"type": "user.custom_tool_result", "custom_tool_use_id": "evt_x", "content": []}
        assert (await send(http, sid, wrong)).status_code == 400

        answer = {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": use["id"],
            "content": [{"type": "text", "text": "42"}],
            "is_error": False,
        }
        answered = await send(http, sid, answer)
        assert answered.status_code == 202
        assert answered.json()["data"][0]["turn_id"] == sent.json()["data"][0]["turn_id"]
        await sse.until(idle_end)
    types = [f.event for f in sse.events]
    assert types[-4:] == [
        "user.custom_tool_result",
        "session.status_running",
        "agent.message",
        "session.status_idle",
    ]
    reply = next(f.json() for f in sse.events if f.event == "agent.message")
    assert reply["content"][0]["text"] == "lookup returned: 42"


async def test_requires_action_partial_answers(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    async def two_tools(ctx: TurnContext) -> StopReasonJSON | None:
        first = await ctx.custom_tool("a", {})
        second = await ctx.custom_tool("b", {})
        answers = await ctx.require_action([first["id"], second["id"]])
        await ctx.message(" ".join(a["custom_tool_use_id"] for a in answers))
        return None

    server.script = two_tools
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    idle = await server.wait_for_event(sid, "session.status_idle")
    first_id, second_id = idle["stop_reason"]["event_ids"]
    result = {"type": "user.custom_tool_result", "content": [{"type": "text", "text": "ok"}]}
    assert (await send(http, sid, {**result, "custom_tool_use_id": second_id})).status_code == 202
    again = await server.wait_for_event(sid, "session.status_idle", after_id=idle["id"])
    assert again["stop_reason"] == {"type": "requires_action", "event_ids": [first_id]}
    assert (await send(http, sid, {**result, "custom_tool_use_id": first_id})).status_code == 202
    await server.wait_idle(sid)
    message = next(e for e in server.stored_events(sid) if e["type"] == "agent.message")
    assert message["content"][0]["text"] == f"{second_id} {first_id}"


async def test_interrupt(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.dialect.turn_ids = True
    server.script = gated(asyncio.Event())
    sid = server.add_session()["id"]
    idle_interrupt = await send(http, sid, {"type": "user.interrupt"})
    assert idle_interrupt.status_code == 202
    assert idle_interrupt.json()["data"][0]["turn_id"] is None
    assert [e["type"] for e in server.stored_events(sid)] == ["user.interrupt"]

    sent = await send(http, sid, user_message())
    turn_id = sent.json()["data"][0]["turn_id"]
    await server.wait_for_event(sid, "span.model_request_start")
    interrupted = await send(http, sid, {"type": "user.interrupt"})
    assert interrupted.status_code == 202
    assert interrupted.json()["data"][0]["turn_id"] == turn_id
    await server.wait_idle(sid)
    events = server.turn_events(sid, turn_id)
    assert [e["type"] for e in events] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "user.interrupt",
        "span.model_request_end",
        "session.status_idle",
    ]
    assert events[4]["is_error"] is True
    assert events[4]["model_request_start_id"] == events[2]["id"]
    assert events[-1]["stop_reason"] == {"type": "end_turn"}
    # A new turn can start at once.
    server.script = None
    await run_turn(http, server, sid)


async def test_cancel_running_turn(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.dialect.turn_ids = True
    server.script = gated(asyncio.Event())
    sid = server.add_session()["id"]
    sent = await send(http, sid, user_message())
    await server.wait_for_event(sid, "span.model_request_start")
    cancel = await http.post(f"sessions/{sid}/cancel")
    assert cancel.status_code == 202
    assert cancel.json() == {"id": sid, "type": "session", "status": "canceling"}
    await server.wait_idle(sid)
    events = server.turn_events(sid, sent.json()["data"][0]["turn_id"])
    assert events[-1]["type"] == "session.status_idle"
    assert events[-1]["stop_reason"] == {"type": "end_turn"}
    again = await http.post(f"sessions/{sid}/cancel")
    assert again.status_code == 200


async def test_script_error_ends_turn(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    async def broken(ctx: TurnContext) -> StopReasonJSON | None:
        raise ValueError("boom")

    server.script = broken
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    error, idle = server.stored_events(sid)[-2:]
    assert error["type"] == "session.error"
    assert error["error"] == {
        "type": "unknown_error",
        "message": "boom",
        "retry_status": {"type": "terminal"},
    }
    assert idle["stop_reason"] == {"type": "retries_exhausted"}


async def test_incremental_streaming_events_are_stored(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    session = server.add_session(incremental_streaming_enabled=True)
    assert session["incremental_streaming_enabled"] is True
    sid = session["id"]
    await run_turn(http, server, sid, "incremental please")
    types = [e["type"] for e in server.stored_events(sid)]
    start = types.index("agent.message_start")
    assert types[start : start + 3] == [
        "agent.message_start",
        "agent.content_block_start",
        "agent.content_block_delta",
    ]
    tail = types[types.index("agent.content_block_stop") :]
    assert tail[:4] == [
        "agent.content_block_stop",
        "agent.message_delta",
        "agent.message_stop",
        "agent.message",
    ]
    stored = server.stored_events(sid)
    deltas = [e for e in stored if e["type"] == "agent.content_block_delta"]
    assert len(deltas) > 1
    final = next(e for e in stored if e["type"] == "agent.message")
    assert "".join(d["delta"]["text"] for d in deltas) == final["content"][0]["text"]
    assert {d["message_id"] for d in deltas} == {final["message_id"]}
    history = (await http.get(f"sessions/{sid}/events", params={"limit": "100"})).json()["data"]
    assert [e["type"] for e in history] == types


# --------------------------------------------------------------------------- SSE


async def test_stream_replays_history_then_stays_open(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    async with open_stream(http, sid) as sse:
        assert sse.response.headers["content-type"] == "text/event-stream"
        assert sse.response.headers["cache-control"] == "no-cache"
        assert sse.response.headers["x-request-id"].startswith("req_")
        await sse.until(has("session.status_idle"))
        await sse.until(heartbeats(1))
        assert [f.id for f in sse.events] == [e["id"] for e in stored]
        for frame in sse.events:
            data = frame.json()
            assert "id" not in data  # the SSE id: line is the only id (the default wire)
            assert data["type"] == frame.event
        assert b": heartbeat\n\n" in sse.raw
        # Live: a new turn arrives on the same connection.
        await send(http, sid, user_message("live"))
        await sse.until(has("session.status_idle", 2))
    assert not any(f.event in ("event_start", "event_delta") for f in sse.frames)


async def test_stream_resume_with_last_event_id(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    async with open_stream(http, sid, last_event_id=stored[3]["id"]) as sse:
        await sse.until(has("session.status_idle"))
    assert [f.id for f in sse.events] == [e["id"] for e in stored[4:]]
    query = {"last_event_id": stored[-2]["id"]}
    async with http.stream("GET", f"sessions/{sid}/events/stream", params=query) as response:
        by_query = SSE(response)
        await by_query.until(heartbeats(1))
    assert [f.id for f in by_query.events] == [stored[-1]["id"]]

    unknown = await http.get(
        f"sessions/{sid}/events/stream", headers={"Last-Event-ID": "evt_ffffffffffff"}
    )
    assert unknown.status_code == 400
    assert error_of(unknown)["type"] == "invalid_request_error"
    other = server.add_session()["id"]
    foreign = await http.get(
        f"sessions/{other}/events/stream", headers={"Last-Event-ID": stored[0]["id"]}
    )
    assert foreign.status_code == 400


async def test_previews_with_event_deltas(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    async with open_stream(http, sid, deltas=["agent.message", "agent.thinking"]) as sse:
        await send(http, sid, user_message("preview me"))
        await sse.until(idle_end)
        async with open_stream(http, sid, deltas=["agent.message"]) as replay:
            await replay.until(has("session.status_idle"))
    stored = server.stored_events(sid)
    message = next(e for e in stored if e["type"] == "agent.message")
    thinking = next(e for e in stored if e["type"] == "agent.thinking")
    previews = [f for f in sse.frames if f.event in ("event_start", "event_delta")]
    starts = [f.json() for f in previews if f.event == "event_start"]
    assert starts == [
        {"type": "event_start", "event": {"id": thinking["id"], "type": "agent.thinking"}},
        {"type": "event_start", "event": {"id": message["id"], "type": "agent.message"}},
    ]
    deltas = [f for f in previews if f.event == "event_delta"]
    assert len(deltas) >= 2
    assert {f.id for f in deltas} == {message["id"]}
    text = ""
    for frame in deltas:
        data = frame.json()
        assert data["event_id"] == message["id"]
        assert data["delta"]["type"] == "content_delta"
        assert data["delta"]["index"] == 0
        text += data["delta"]["content"]["text"]
    assert text == message["content"][0]["text"]
    ids = [f.id for f in sse.frames if f.data is not None]
    start_at = ids.index(message["id"])
    assert ids[start_at : start_at + len(deltas) + 2] == [message["id"]] * (len(deltas) + 2)
    assert [f.event for f in sse.frames if f.id == message["id"]][-1] == "agent.message"
    # Previews are never stored, never replayed, never in history.
    assert not any(f.event in ("event_start", "event_delta") for f in replay.frames)
    history = (await http.get(f"sessions/{sid}/events", params={"limit": "100"})).json()["data"]
    assert {e["type"] for e in history}.isdisjoint({"event_start", "event_delta"})
    assert [e["id"] for e in history] == [e["id"] for e in stored]


async def test_resume_from_an_in_progress_preview(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    async def slow_message(ctx: TurnContext) -> StopReasonJSON | None:
        ctx.emit("span.model_request_start")
        await ctx.message("never finished", delay=3600)
        return None

    server.script = slow_message
    sid = server.add_session()["id"]
    async with open_stream(http, sid, deltas=["agent.message"]) as first:
        await send(http, sid, user_message())
        await first.until(lambda sse: any(f.event == "event_start" for f in sse.frames))
    preview_id = next(f.id for f in first.frames if f.event == "event_start")
    assert preview_id not in {e["id"] for e in server.stored_events(sid)}
    async with open_stream(http, sid, last_event_id=preview_id, deltas=["agent.message"]) as sse:
        await send(http, sid, {"type": "user.interrupt"})
        await sse.until(has("session.status_idle"))
    # Continues after the last stored event before the preview; the started preview is skipped.
    assert [f.event for f in sse.frames if f.data is not None] == [
        "user.interrupt",
        "span.model_request_end",
        "session.status_idle",
    ]


async def test_a_preview_in_flight_reaches_late_and_resumed_connections(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    """The documented resume rule, and a late joiner gets the open preview whole.

    Connections opened while a preview is in flight: a fresh one and one
    resuming from before the preview get it from its ``event_start``; one
    resuming from the preview's own id gets only the deltas sent after it
    connected; none repeats a frame, and a closed preview is never replayed.
    """
    pieces = ["Hel", "lo ", "wor", "ld"]
    gate = asyncio.Event()
    server.script = held_message(pieces, 2, gate)
    sid = server.add_session()["id"]
    sent = (await send(http, sid, user_message())).json()["data"][0]
    state = server._sessions[sid]
    await eventually(lambda: len(state.feed) - len(state.log) >= 3, "the held preview")
    preview_id = state.feed[-1].event_id  # type: ignore[union-attr]
    deltas = ["agent.message"]
    async with contextlib.AsyncExitStack() as stack:
        late = await stack.enter_async_context(open_stream(http, sid, deltas=deltas))
        before = await stack.enter_async_context(
            open_stream(http, sid, last_event_id=sent["id"], deltas=deltas)
        )
        own = await stack.enter_async_context(
            open_stream(http, sid, last_event_id=preview_id, deltas=deltas)
        )
        plain = await stack.enter_async_context(open_stream(http, sid))
        gate.set()
        for sse in (late, before, own, plain):
            await sse.until(has("session.status_idle"))

    def preview(sse: SSE) -> tuple[list[str], str]:
        frames = [f for f in sse.frames if f.id == preview_id]
        text = "".join(
            f.json()["delta"]["content"]["text"] for f in frames if f.event == "event_delta"
        )
        return [f.event or "" for f in frames], text

    whole = ["event_start", *["event_delta"] * 4, "agent.message"]
    assert preview(late) == (whole, "Hello world")
    assert preview(before) == (whole, "Hello world")
    assert preview(own) == (["event_delta", "event_delta", "agent.message"], "world")
    assert preview(plain) == (["agent.message"], "")
    async with open_stream(http, sid, deltas=deltas) as after:
        await after.until(has("session.status_idle"))
    assert preview(after) == (["agent.message"], "")


@pytest.mark.parametrize(
    ("style", "frame"),
    [
        ("comment", b": heartbeat\n\n"),
        ("event", b"event: heartbeat\ndata: {}\n\n"),
        ("ping", b"event: ping\ndata: {}\n\n"),
    ],
)
async def test_heartbeat_dialects(style: Any, frame: bytes) -> None:
    dialect = OldWire(heartbeat=style, retry_ms=1500)
    async with FakeQoderServer(dialect=dialect, heartbeat_interval=0.02) as server:
        sid = server.add_session()["id"]
        async with client_for(server) as http, open_stream(http, sid) as sse:
            await sse.until(heartbeats(2))
    assert sse.raw.startswith(b"retry: 1500\n\n")
    assert sse.raw.count(frame) >= 2
    assert sse.events == []


async def test_delete_closes_streams(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.script = gated(asyncio.Event())
    sid = server.add_session()["id"]
    async with open_stream(http, sid) as sse, open_stream(http, sid) as other:
        await send(http, sid, user_message())
        await sse.until(has("span.model_request_start"))
        assert server.open_streams == 2
        deleted = await http.delete(f"sessions/{sid}")
        assert deleted.status_code == 200
        await sse.to_end()
        await other.to_end()
    assert sse.error is None
    assert other.error is None
    assert sse.events[-1].event == "session.deleted"
    assert server.stored_events(sid)[-1]["type"] == "session.deleted"
    assert (await http.get(f"sessions/{sid}/events")).status_code == 404
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")


async def test_open_streams_drop_to_zero_after_disconnect() -> None:
    async with FakeQoderServer(heartbeat_interval=3600) as server, client_for(server) as http:
        sid = server.add_session()["id"]
        await run_turn(http, server, sid)
        for _ in range(3):
            async with open_stream(http, sid) as sse:
                await sse.until(has("session.status_idle"))
                assert server.open_streams >= 1
        await eventually(lambda: server.open_streams == 0, "every SSE connection closed")
        assert server.stream_connections == 3


async def test_close_is_idempotent_and_ends_streams() -> None:
    server = FakeQoderServer(heartbeat_interval=3600)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    await server.start()
    sid = server.add_session()["id"]
    async with client_for(server) as http, open_stream(http, sid) as sse:
        await eventually(lambda: server.open_streams == 1, "one SSE connection open")
        await server.close()
        await sse.to_end()
    assert server.open_streams == 0
    await server.close()


async def test_recorded_requests(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    await http.post("environments?x=1&x=2", json={"name": "rec"}, headers={"X-Custom": "v"})
    recorded = server.requests[-1]
    assert recorded.method == "POST"
    assert recorded.path == "/api/v1/cloud/environments"
    assert recorded.query == {"x": ["1", "2"]}
    assert recorded.headers["x-custom"] == "v"
    assert recorded.headers["authorization"] == f"Bearer {server.token}"
    assert recorded.json() == {"name": "rec"}


# --------------------------------------------------------------------------- dialects


async def test_dialect_statuses() -> None:
    dialect = Dialect(send_status=200, create_status=200, cancel_status=200)
    async with FakeQoderServer(dialect=dialect, script=gated(asyncio.Event())) as server:
        async with client_for(server) as http:
            env = await http.post("environments", json={"name": "e"})
            agent = await http.post("agents", json={"name": "a", "model": "auto"})
            session = await http.post(
                "sessions", json={"agent": agent.json()["id"], "environment_id": env.json()["id"]}
            )
            assert env.status_code == agent.status_code == session.status_code == 200
            sid = session.json()["id"]
            assert (await send(http, sid, user_message())).status_code == 200
            await server.wait_for_event(sid, "span.model_request_start")
            assert (await http.post(f"sessions/{sid}/cancel")).status_code == 200


async def test_dialect_wire_shapes() -> None:
    dialect = OldWire(
        turn_ids=False,
        data_ids=False,
        string_content=True,
        legacy_idle=True,
        thinking_field="content",
    )
    async with FakeQoderServer(dialect=dialect, heartbeat_interval=0.05) as server:
        sid = server.add_session()["id"]
        async with client_for(server) as http:
            sent = await send(http, sid, user_message("old style"))
            echo = sent.json()["data"][0]
            assert "turn_id" not in echo
            assert echo["content"] == "old style"
            await server.wait_idle(sid)
            async with open_stream(http, sid) as sse:
                await sse.until(has("session.status_idle"))
            history = (await http.get(f"sessions/{sid}/events")).json()["data"]
    stored = server.stored_events(sid)
    assert [f.id for f in sse.events] == [e["id"] for e in stored]
    frames = {f.event: f.json() for f in sse.events}
    for data in frames.values():
        assert "id" not in data
        assert "type" not in data
        assert "turn_id" not in data
    assert frames["session.status_idle"]["status"] == "idle"
    assert "stop_reason" not in frames["session.status_idle"]
    assert frames["session.status_running"]["status"] == "running"
    assert frames["agent.thinking"]["content"] == "Let me look at that."
    assert "thinking" not in frames["agent.thinking"]
    assert isinstance(frames["agent.message"]["content"], str)
    assert all("id" in e and "type" in e and "turn_id" not in e for e in history)
    # The server's own record stays canonical.
    assert all(e["turn_id"] for e in stored)
    assert next(e for e in stored if e["type"] == "session.status_idle")["stop_reason"]


async def test_dialect_thinking_without_text(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.dialect = OldWire(thinking_field=None)
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    history = (await http.get(f"sessions/{sid}/events")).json()["data"]
    thinking = next(e for e in history if e["type"] == "agent.thinking")
    assert "thinking" not in thinking
    assert "content" not in thinking


# --------------------------------------------------------------------------- faults


async def test_fault_drop_after_bytes(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    server.faults.drop_after_bytes = 700
    async with open_stream(http, sid) as sse:
        await sse.to_end()
    assert isinstance(sse.error, httpx.RemoteProtocolError)
    assert len(sse.raw) == 700
    assert not sse.raw.endswith(b"\n\n")  # cut mid-frame
    assert server.fault_counts["drop_after_bytes"] == 1
    # Resuming from the last complete frame makes progress.
    last = sse.events[-1].id
    async with open_stream(http, sid, last_event_id=last) as resumed:
        await resumed.to_end()
    assert resumed.events[0].id != last
    assert server.fault_counts["drop_after_bytes"] == 2


async def test_fault_drop_after_events_and_probability(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    server.faults.drop_after_events = 3
    async with open_stream(http, sid) as sse:
        await sse.to_end()
    assert isinstance(sse.error, httpx.RemoteProtocolError)
    assert [f.id for f in sse.events] == [e["id"] for e in stored[:3]]
    assert sse.rest  # half a frame arrived
    server.faults.drop_after_events = None
    server.faults.drop_probability = 1.0
    async with open_stream(http, sid) as dropped:
        await dropped.to_end()
    assert dropped.events == []
    assert dropped.rest.startswith(b"id: ")
    assert server.fault_counts == {"drop_after_events": 1, "drop_probability": 1}


async def test_fault_drop_probability_is_reproducible() -> None:
    async def run(seed: int) -> list[int]:
        counts = []
        faults = Faults(drop_probability=0.3)
        async with FakeQoderServer(seed=seed, faults=faults) as server:
            async with client_for(server) as http:
                sid = server.add_session()["id"]
                faults.drop_probability = 0.0
                await run_turn(http, server, sid)
                faults.drop_probability = 0.3
                for _ in range(5):
                    async with open_stream(http, sid) as sse:
                        try:
                            await sse.until(has("session.status_idle"), timeout=1.0)
                        except AssertionError:
                            pass
                        except httpx.TransportError:
                            pass
                        counts.append(len(sse.events))
        return counts

    assert await run(3) == await run(3)


async def test_fault_duplicate_on_resume(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    server.faults.duplicate_on_resume = 2
    async with open_stream(http, sid, last_event_id=stored[4]["id"]) as sse:
        await sse.until(has("session.status_idle"))
    expected = [e["id"] for e in stored[3:5] + stored[5:]]
    assert [f.id for f in sse.events] == expected
    assert server.fault_counts["duplicate_on_resume"] == 2


async def test_fault_stall(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    server.faults.stall_probability = 1.0
    async with open_stream(http, sid) as sse:
        await sse.until(heartbeats(3))
        await send(http, sid, user_message("ignored by the stalled stream"))
        await server.wait_idle(sid)
        count = len(sse.frames)
        await sse.until(lambda s: len(s.frames) >= count + 2)
    assert sse.events == []
    assert server.fault_counts["stall_probability"] == 1


async def test_fault_throttle(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.faults.throttle_first = 2
    server.faults.retry_after = 0.25
    first = await http.get("sessions")
    second = await http.post("environments", json={"name": "x"})
    third = await http.get("sessions")
    assert first.status_code == second.status_code == 429
    assert first.headers["retry-after"] == "0.25"
    assert first.headers["retry-after-ms"] == "250"
    assert error_of(first)["type"] == "rate_limit_error"
    assert third.status_code == 200
    assert server.faults.throttle_first == 0
    server.faults.throttle_first = 1
    server.faults.throttle_status = 503
    server.faults.retry_after = 2
    unavailable = await http.get("sessions")
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "2"
    assert error_of(unavailable)["type"] == "overloaded_error"
    server.faults.throttle_probability = 1.0
    server.faults.throttle_status = 429
    assert (await http.get("agents")).status_code == 429
    server.faults.throttle_probability = 0.0
    assert (await http.get("agents")).status_code == 200
    assert server.fault_counts == {"throttle_first": 3, "throttle_probability": 1}


async def test_fault_fail_send_after_store(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    server.faults.fail_send_after_store = 1
    headers = {"Idempotency-Key": "retry-me"}
    failed = await send(http, sid, user_message(), headers=headers)
    assert failed.status_code == 500
    assert error_of(failed)["type"] == "api_error"
    stored = server.user_messages(sid)
    assert len(stored) == 1
    retried = await send(http, sid, user_message(), headers=headers)
    assert retried.status_code == 202
    assert retried.json()["data"][0]["id"] == stored[0]["id"]
    await server.wait_idle(sid)
    assert len(server.user_messages(sid)) == 1
    assert server.fault_counts["fail_send_after_store"] == 1


async def test_fault_slow(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    server.faults.slow_seconds = 0.01
    server.faults.slow_stream_seconds = 0.01
    assert (await http.get("sessions")).status_code == 200
    async with open_stream(http, sid) as sse:
        await sse.until(heartbeats(1))
    assert server.fault_counts["slow_seconds"] >= 1
    assert server.fault_counts["slow_stream_seconds"] == 1


async def test_fault_inject_frames(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    junk = [b"event: agent.message\ndata: {not json\n\n", b"data: \xff\xfe\n\n"]
    server.faults.inject_frames = list(junk)
    server.faults.close_after_inject = True
    async with open_stream(http, sid) as sse:
        await sse.to_end()
    assert sse.error is None
    assert sse.raw.endswith(b"".join(junk))
    assert len(sse.events) == len(DEFAULT_ORDER) + 2
    assert server.faults.inject_frames == []
    assert server.fault_counts["inject_frames"] == 2
    server.faults.close_after_inject = False
    async with open_stream(http, sid) as clean:
        await clean.until(heartbeats(1))
    assert b"not json" not in clean.raw


async def test_fault_respond_next(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    server.faults.respond_next.append(
        CannedResponse(
            "GET", r"/sessions$", 502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>"
        )
    )
    assert (await http.get("agents")).status_code == 200
    canned = await http.get("sessions")
    assert canned.status_code == 502
    assert canned.text == "<html>Bad Gateway</html>"
    assert canned.headers["content-type"] == "text/html"
    assert (await http.get("sessions")).status_code == 200
    assert server.fault_counts == {"respond_next": 1}


async def test_fault_close_after_idle(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    await run_turn(http, server, sid)
    server.faults.close_after_idle = True
    async with open_stream(http, sid) as sse:
        await sse.to_end()
    assert sse.error is None
    assert sse.events[-1].event == "session.status_idle"
    assert len(sse.events) == 2 * len(DEFAULT_ORDER)  # the first idle did not end it
    assert server.fault_counts["close_after_idle"] == 1


async def test_fault_ignore_last_event_id(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    server.faults.ignore_last_event_id = True
    async with open_stream(http, sid, last_event_id=stored[-2]["id"]) as sse:
        await sse.until(has("session.status_idle"))
        # Then live: the next turn arrives on the same connection.
        await send(http, sid, user_message("live"))
        await sse.until(has("session.status_idle", 2))
    assert [f.id for f in sse.events] == [e["id"] for e in server.stored_events(sid)]
    # The cursor is not even checked: an unknown one replays everything too.
    async with open_stream(http, sid, last_event_id="evt_unknown") as again:
        await again.until(has("session.status_idle", 2))
    assert again.events[0].id == stored[0]["id"]
    # Query-parameter cursors are ignored the same way.
    async with http.stream(
        "GET", f"sessions/{sid}/events/stream", params={"last_event_id": stored[-1]["id"]}
    ) as response:
        query = await SSE(response).until(has("session.status_idle", 2))
    assert query.events[0].id == stored[0]["id"]
    assert server.fault_counts == {"ignore_last_event_id": 3}
    server.faults.ignore_last_event_id = False
    async with open_stream(http, sid) as fresh:
        await fresh.until(has("session.status_idle", 2))
    assert server.fault_counts == {"ignore_last_event_id": 3}  # no cursor: nothing to ignore


async def test_fault_reorder_on_replay(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    stored = server.stored_events(sid)
    server.faults.duplicate_on_resume = 4
    server.faults.reorder_on_replay = True
    cursor = stored[5]["id"]
    async with open_stream(http, sid, last_event_id=cursor) as sse:
        await sse.until(has("session.status_idle"))
    ids = [f.id for f in sse.events]
    resent = [e["id"] for e in stored[2:6]]
    assert sorted(ids[:4]) == sorted(resent)
    assert ids[:4] != resent  # shuffled, never the stored order
    assert ids[4:] == [e["id"] for e in stored[6:]]  # then in order after the cursor
    assert server.fault_counts == {"duplicate_on_resume": 4, "reorder_on_replay": 1}
    # One re-sent event cannot be reordered; nothing is counted.
    server.faults.duplicate_on_resume = 1
    async with open_stream(http, sid, last_event_id=cursor) as single:
        await single.until(has("session.status_idle"))
    assert [f.id for f in single.events][:2] == [cursor, stored[6]["id"]]
    assert server.fault_counts["reorder_on_replay"] == 1


async def test_fault_silent_stream(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    server.dialect.retry_ms = 500
    server.faults.silent_stream = True
    async with http.stream("GET", f"sessions/{sid}/events/stream") as silent:
        assert silent.status_code == 200
        assert silent.headers["content-type"] == "text/event-stream"
        received: list[bytes] = []

        async def read_silent() -> None:
            async for chunk in silent.aiter_bytes():
                received.append(chunk)

        reader = asyncio.create_task(read_silent())
        server.faults.silent_stream = False
        # A normal connection sees a whole turn and several heartbeats meanwhile.
        async with open_stream(http, sid) as loud:
            await send(http, sid, user_message("anyone there?"))
            await loud.until(idle_end)
            await loud.until(heartbeats(3))
        assert received == []
        assert not reader.done()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
    assert server.fault_counts == {"silent_stream": 1}


async def test_fault_stuck_for_aborts_stalled_and_silent_connections(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    """``stuck_for``: a gateway's timeout ends a stuck connection (an abort, not a
    clean end), whether it was sending heartbeats only or nothing at all."""
    sid = server.add_session()["id"]
    await run_turn(http, server, sid)
    server.faults.stuck_for = 0.2
    server.faults.stall_probability = 1.0
    async with open_stream(http, sid) as stalled:
        await stalled.to_end()
    assert isinstance(stalled.error, httpx.TransportError)  # aborted, not ended
    assert stalled.events == []
    server.faults.stall_probability = 0.0
    server.faults.silent_stream = True
    async with open_stream(http, sid) as silent:
        await silent.to_end()
    assert isinstance(silent.error, httpx.TransportError)
    assert silent.raw == b""
    assert server.fault_counts["stuck_for"] == 2
    assert server.open_streams == 0


async def test_fault_empty_send_data(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    server.faults.empty_send_data = 1
    headers = {"Idempotency-Key": "empty"}
    empty = await send(http, sid, user_message("stored anyway"), headers=headers)
    assert empty.status_code == 202
    assert empty.json() == {"data": []}
    await server.wait_idle(sid)
    assert [e["type"] for e in server.stored_events(sid)] == DEFAULT_ORDER
    replayed = await send(http, sid, user_message("stored anyway"), headers=headers)
    assert replayed.json() == {"data": []}
    assert len(server.user_messages(sid)) == 1
    normal = await send(http, sid, user_message("echoed"))
    assert normal.json()["data"][0]["type"] == "user.message"
    assert server.faults.empty_send_data == 0
    assert server.fault_counts == {"empty_send_data": 1}


async def test_dialect_turn_ids_everywhere_and_send_turn_ids(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    server.dialect.turn_ids = True
    server.dialect.send_turn_ids = False
    sent = await send(http, sid, user_message())
    assert "turn_id" not in sent.json()["data"][0]
    await server.wait_idle(sid)
    listed = (await http.get(f"sessions/{sid}/events")).json()["data"]
    assert all(e["turn_id"] for e in listed)
    async with open_stream(http, sid) as sse:
        await sse.until(has("session.status_idle"))
    assert all(f.json()["turn_id"] for f in sse.events)

    server.dialect.send_turn_ids = True
    server.dialect.turn_ids = False
    sent = await send(http, sid, user_message())
    assert "turn_id" not in sent.json()["data"][0]
    await server.wait_idle(sid)
    listed = (await http.get(f"sessions/{sid}/events")).json()["data"]
    assert all("turn_id" not in e for e in listed)
    async with open_stream(http, sid) as sse:
        await sse.until(has("session.status_idle", 2))
    assert all("turn_id" not in f.json() for f in sse.events)


async def test_default_wire_is_what_production_sends(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    """No turn_id, session_id, schema_version or created_at on events; no id in frame data.

    Each switch brings its fields back; the server's own record keeps them all.
    """
    metadata = {"turn_id", "session_id", "schema_version", "created_at"}
    sid = server.add_session()["id"]
    sent = (await send(http, sid, user_message())).json()["data"]
    await server.wait_idle(sid)
    listed = (await http.get(f"sessions/{sid}/events")).json()["data"]
    async with open_stream(http, sid) as sse:
        await sse.until(has("session.status_idle"))
    streamed = [f.json() for f in sse.events]
    assert set(sent[0]) == {"id", "type", "content", "processed_at"}  # as the capture
    assert not any(metadata & set(e) for e in [*sent, *listed, *streamed])
    assert all("id" in e for e in listed)
    assert not any("id" in e for e in streamed)
    assert all(metadata <= set(e) for e in server.stored_events(sid))

    server.dialect.turn_ids = True
    server.dialect.event_metadata = True
    server.dialect.stream_data_ids = True
    sent = (await send(http, sid, user_message())).json()["data"]
    await server.wait_idle(sid)
    listed = (await http.get(f"sessions/{sid}/events")).json()["data"]
    async with open_stream(http, sid) as sse:
        await sse.until(has("session.status_idle", 2))
    assert all(metadata <= set(e) for e in [*sent, *listed])
    assert all(metadata | {"id"} <= set(f.json()) for f in sse.events)


async def test_paused_session_reports_idle_but_refuses_messages(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.script = tool_script("lookup", {})
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    idle = await server.wait_for_event(sid, "session.status_idle")
    assert idle["stop_reason"]["type"] == "requires_action"
    assert (await http.get(f"sessions/{sid}")).json()["status"] == "idle"
    busy = await send(http, sid, user_message("meanwhile"))
    assert busy.status_code == 409
    assert error_of(busy)["type"] == "conflict_error"
    assert "requires_action" in error_of(busy)["message"]
    assert "Idempotency-Key" not in error_of(busy)["message"]
    # An interrupt first in the same batch ends the paused turn; the message starts one.
    server.script = None
    both = await send(http, sid, {"type": "user.interrupt"}, user_message("instead"))
    assert both.status_code == 202
    await server.wait_idle(sid)
    assert len(server.user_messages(sid)) == 2


async def test_results_for_tool_uses_not_awaited_are_conflicts(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.script = tool_script("lookup", {})
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    idle = await server.wait_for_event(sid, "session.status_idle")
    [use_id] = idle["stop_reason"]["event_ids"]
    result = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": use_id,
        "content": [{"type": "text", "text": "ok"}],
    }
    assert (await send(http, sid, result)).status_code == 202
    await server.wait_idle(sid)
    again = await send(http, sid, result)
    assert again.status_code == 409
    assert error_of(again)["type"] == "conflict_error"
    assert error_of(again)["message"] == (
        f"tool results not awaited: {use_id} is not awaiting a result"
    )
    confirmation = {"type": "user.tool_confirmation", "tool_use_id": use_id, "result": "allow"}
    assert (await send(http, sid, confirmation)).status_code == 409
    # An id that never was a tool use stays a 400.
    user_id = server.user_messages(sid)[0]["id"]
    for ref in ("evt_never", user_id):
        unknown = await send(http, sid, {**result, "custom_tool_use_id": ref})
        assert unknown.status_code == 400, ref
        assert error_of(unknown)["type"] == "invalid_request_error"
    # A duplicate answer inside one batch: the second is not awaited any more.
    await send(http, sid, user_message("again"))
    idle = await server.wait_for_event(sid, "session.status_idle", after_id=idle["id"])
    while idle["stop_reason"]["type"] != "requires_action":
        idle = await server.wait_for_event(sid, "session.status_idle", after_id=idle["id"])
    [use_id] = idle["stop_reason"]["event_ids"]
    answer = {**result, "custom_tool_use_id": use_id}
    twice = await send(http, sid, answer, answer)
    assert twice.status_code == 409
    assert "A request with this Idempotency-Key" not in error_of(twice)["message"]


# --------------------------------------------------------------------------- threads

MULTIAGENT_ORDER = [
    ("user.message", None),
    ("session.status_running", None),
    ("session.thread_created", "T"),
    ("session.thread_status_running", "T"),
    ("agent.thread_message_sent", None),
    ("agent.thread_message_received", "T"),
    ("agent.message", "T"),
    ("agent.thread_message_sent", "T"),
    ("agent.thread_message_received", None),
    ("session.thread_status_idle", "T"),
    ("agent.message", None),
    ("session.status_idle", None),
]


async def test_multiagent_script_and_thread_endpoints(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.script = multiagent_script
    sid = server.add_session()["id"]
    await run_turn(http, server, sid, "tides")
    stored = server.stored_events(sid)
    [thread] = server.threads(sid)
    tid = thread["id"]
    assert re.fullmatch(r"sthr_[0-9a-z]{26}", tid)
    assert [(e["type"], e.get("session_thread_id")) for e in stored] == [
        (kind, tid if where else None) for kind, where in MULTIAGENT_ORDER
    ]
    by_type = {(e["type"], e.get("session_thread_id")): e for e in stored}
    sent = by_type[("agent.thread_message_sent", None)]
    assert sent["to_session_thread_id"] == tid
    assert sent["to_agent_name"] == "researcher"
    back = by_type[("agent.thread_message_received", None)]
    assert back["from_session_thread_id"] == tid
    assert back["from_agent_name"] == "researcher"
    assert by_type[("session.thread_status_idle", tid)]["stop_reason"] == {"type": "end_turn"}
    assert by_type[("agent.message", None)]["content"][0]["text"] == (
        "The researcher reports: Research notes on: tides"
    )

    listed = (await http.get(f"sessions/{sid}/threads")).json()
    assert [t["id"] for t in listed["data"]] == [tid]
    assert listed["has_more"] is False
    fetched = (await http.get(f"sessions/{sid}/threads/{tid}")).json()
    assert fetched["type"] == "session_thread"
    assert fetched["session_id"] == sid
    assert fetched["agent_name"] == fetched["agent"]["name"] == "researcher"
    assert fetched["parent_thread_id"] is None
    assert fetched["status"] == "idle"
    assert fetched["archived_at"] is None
    assert set(fetched["stats"]) == {"active_seconds", "duration_seconds", "startup_seconds"}
    assert fetched["stats"]["duration_seconds"] >= fetched["stats"]["active_seconds"] >= 0
    assert fetched["usage"] == {"input_tokens": 0, "output_tokens": 0}

    thread_events = [e for e in stored if e.get("session_thread_id") == tid]
    page = (await http.get(f"sessions/{sid}/threads/{tid}/events", params={"limit": 3})).json()
    assert [e["id"] for e in page["data"]] == [e["id"] for e in thread_events[:3]]
    rest = await http.get(
        f"sessions/{sid}/threads/{tid}/events", params={"page": page["next_page"]}
    )
    assert [e["id"] for e in rest.json()["data"]] == [e["id"] for e in thread_events[3:]]
    before = await http.get(
        f"sessions/{sid}/threads/{tid}/events", params={"before_id": thread_events[2]["id"]}
    )
    assert [e["id"] for e in before.json()["data"]] == [e["id"] for e in thread_events[:2]]

    archived = (await http.post(f"sessions/{sid}/threads/{tid}/archive")).json()
    assert archived["archived_at"] is not None
    assert (await http.get(f"sessions/{sid}/threads/sthr_nope")).status_code == 404
    assert (await http.get(f"sessions/{sid}/threads/sthr_nope/events")).status_code == 404


async def test_thread_stream_sends_only_its_events_and_resumes_by_header(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.script = multiagent_script
    sid = server.add_session()["id"]
    await run_turn(http, server, sid, "first")
    [thread] = server.threads(sid)
    path = f"sessions/{sid}/threads/{thread['id']}/stream"
    own = [e for e in server.stored_events(sid) if e.get("session_thread_id") == thread["id"]]
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        sse = await SSE(response).until(has("session.thread_status_idle"))
    assert [f.id for f in sse.events] == [e["id"] for e in own]
    # Resume by header; the last_event_id query parameter does not exist here.
    headers = {"Last-Event-ID": own[2]["id"]}
    params = {"last_event_id": own[-1]["id"]}
    async with http.stream("GET", path, headers=headers, params=params) as response:
        resumed = await SSE(response).until(has("session.thread_status_idle"))
    assert [f.id for f in resumed.events] == [e["id"] for e in own[3:]]
    primary_id = server.user_messages(sid)[0]["id"]
    wrong = await http.get(path, headers={"Last-Event-ID": primary_id})
    assert wrong.status_code == 400
    # The primary stream carries the thread's events too.
    async with open_stream(http, sid) as primary:
        await primary.until(has("session.status_idle"))
    assert {e["id"] for e in own} <= {f.id for f in primary.events}


async def test_thread_stream_live_with_previews(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    gate = asyncio.Event()
    created: list[str] = []

    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        helper = ctx.create_thread("helper")
        assert helper.thread_id is not None
        created.append(helper.thread_id)
        await gate.wait()
        helper.running()
        await helper.message("from the helper", chunks=3)
        helper.idle()
        await ctx.message("from the coordinator")
        return None

    server.script = script
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    await server.wait_for_event(sid, "session.thread_created")
    path = f"sessions/{sid}/threads/{created[0]}/stream"
    params = [("event_deltas[]", "agent.message")]
    async with http.stream("GET", path, params=params) as response:
        sse = SSE(response)
        await sse.until(has("session.thread_created"))
        gate.set()
        await sse.until(has("session.thread_status_idle"))
    assert [f.event for f in sse.events] == [
        "session.thread_created",
        "session.thread_status_running",
        "event_start",
        "event_delta",
        "event_delta",
        "event_delta",
        "agent.message",
        "session.thread_status_idle",
    ]
    text = "".join(f.json()["delta"]["content"]["text"] for f in sse.events[3:6])
    assert text == "from the helper"
    await server.wait_idle(sid)


async def test_subagent_tool_result_must_echo_the_thread(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    server.script = subagent_tool_script("lookup", {"q": 1}, agent_name="finder")
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    idle = await server.wait_for_event(sid, "session.status_idle")
    [use_id] = idle["stop_reason"]["event_ids"]
    use = next(e for e in server.stored_events(sid) if e["id"] == use_id)
    tid = use["session_thread_id"]
    assert use["type"] == "agent.custom_tool_use"
    assert "session_thread_id" not in idle  # the pause is session-wide
    [thread] = server.threads(sid)
    assert thread["id"] == tid
    assert thread["status"] == "idle"  # its own requires_action idle
    result = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": use_id,
        "content": [{"type": "text", "text": "found"}],
    }
    missing = await send(http, sid, result)
    assert missing.status_code == 400
    assert error_of(missing)["param"] == "events[0].session_thread_id"
    assert "session_thread_id" in error_of(missing)["message"]
    wrong = await send(http, sid, {**result, "session_thread_id": "sthr_other"})
    assert wrong.status_code == 400
    assert error_of(wrong)["param"] == "events[0].session_thread_id"
    assert (await send(http, sid, {**result, "session_thread_id": tid})).status_code == 202
    await server.wait_idle(sid)
    stored = server.stored_events(sid)
    thread_idles = [e for e in stored if e["type"] == "session.thread_status_idle"]
    assert [e["stop_reason"]["type"] for e in thread_idles] == ["requires_action", "end_turn"]
    assert stored[-2]["content"][0]["text"] == "finder reports: lookup returned: found"
    unknown = await send(http, sid, {"type": "user.interrupt", "session_thread_id": "sthr_x"})
    assert unknown.status_code == 400


async def test_running_threads_go_idle_when_the_turn_is_interrupted(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        ctx.create_thread("slow").running()
        await ctx.sleep(30)
        return None

    server.script = script
    sid = server.add_session()["id"]
    await send(http, sid, user_message())
    running = await server.wait_for_event(sid, "session.thread_status_running")
    assert server.threads(sid)[0]["status"] == "running"
    interrupt = {"type": "user.interrupt", "session_thread_id": running["session_thread_id"]}
    assert (await send(http, sid, interrupt)).status_code == 202
    await server.wait_idle(sid)
    assert [e["type"] for e in server.stored_events(sid)[-3:]] == [
        "user.interrupt",
        "session.thread_status_idle",
        "session.status_idle",
    ]
    assert server.threads(sid)[0]["status"] == "idle"


# --------------------------------------------------------------------------- files


async def upload(
    http: httpx.AsyncClient, filename: str, content: bytes, mime: str = "text/plain", **fields: str
) -> dict[str, Any]:
    response = await http.post("files", files={"file": (filename, content, mime)}, data=fields)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


async def test_file_upload_metadata_list_and_delete(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    content = b"line one\r\n\x00\xffbinary"
    meta = await upload(
        http,
        "reports/q1 notes.txt",
        content,
        purpose="user_data",
        metadata='{"team": "a"}',
        expires_in_seconds="3600",
    )
    assert re.fullmatch(r"file_[0-9a-z]{26}", meta["id"])
    assert meta["type"] == "file"
    assert meta["filename"] == "q1 notes.txt"
    assert meta["size_bytes"] == len(content)
    assert meta["mime_type"] == meta["content_type"] == "text/plain"
    assert meta["purpose"] == "user_data"
    assert meta["metadata"] == {"team": "a"}
    assert meta["downloadable"] is True
    assert meta["expires_at"] is not None
    assert meta["created_at"]
    assert server.file_content(meta["id"]) == content
    assert (await http.get(f"files/{meta['id']}")).json() == meta
    renamed = await upload(http, "x.bin", b"{}", "application/json", name="data.json")
    assert renamed["filename"] == "data.json"
    assert renamed["purpose"] is None
    unnamed = await http.post("files", files={"file": ("", b"%PDF", "application/pdf")})
    assert unnamed.json()["filename"] == "unnamed.pdf"

    newest_first = (await http.get("files")).json()["data"]
    assert [f["id"] for f in newest_first] == [unnamed.json()["id"], renamed["id"], meta["id"]]
    first = (await http.get("files", params={"limit": 1})).json()
    assert first["has_more"] is True
    after = (await http.get("files", params={"after": first["last_id"], "limit": 1})).json()
    assert [f["id"] for f in after["data"]] == [renamed["id"]]
    before = (await http.get("files", params={"before": renamed["id"]})).json()
    assert [f["id"] for f in before["data"]] == [unnamed.json()["id"]]
    picked = (await http.get("files", params={"ids[]": meta["id"]})).json()
    assert [f["id"] for f in picked["data"]] == [meta["id"]]

    deleted = await http.delete(f"files/{meta['id']}")
    assert deleted.json() == {"id": meta["id"], "type": "file_deleted"}
    for response in (
        await http.get(f"files/{meta['id']}"),
        await http.get(f"files/{meta['id']}/content"),
        await http.delete(f"files/{meta['id']}"),
    ):
        assert response.status_code == 404
        assert error_of(response)["type"] == "not_found_error"


async def test_file_upload_errors(http: httpx.AsyncClient) -> None:
    cases = [
        await http.post("files", json={"file": "not multipart"}),
        await http.post("files", data={"purpose": "no file"}, files={"other": ("a", b"x")}),
        await http.post("files", files={"file": ("a", b"x")}, data={"metadata": "[1]"}),
        await http.post("files", files={"file": ("a", b"x")}, data={"expires_in_seconds": "5"}),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        assert error_of(response)["type"] == "invalid_request_error"
    assert error_of(cases[1])["param"] == "file"


async def test_file_download_bytes_or_link(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    meta = await upload(http, "pic.png", b"\x89PNG\r\n\x1a\n...", "image/png")
    raw = await http.get(f"files/{meta['id']}/content")
    assert raw.status_code == 200
    assert raw.content == b"\x89PNG\r\n\x1a\n..."
    assert raw.headers["content-type"] == "image/png"
    assert raw.headers["content-length"] == str(meta["size_bytes"])
    assert 'filename="pic.png"' in raw.headers["content-disposition"]
    # What the official SDKs do: ask for JSON, get a link, fetch it without credentials.
    link = await http.get(f"files/{meta['id']}/content", headers={"Accept": "application/json"})
    url = link.json()["url"]
    assert url.startswith(server.base_url.removesuffix("/api/v1/cloud"))
    async with httpx.AsyncClient() as anonymous:
        fetched = await anonymous.get(url)
        assert fetched.content == raw.content
        assert fetched.headers["content-type"] == "image/png"
        forged = await anonymous.get(url.split("?")[0] + "?token=guess")
        assert forged.status_code == 403
    server.dialect.file_content = "link"
    assert "url" in (await http.get(f"files/{meta['id']}/content")).json()
    server.dialect.file_content = "bytes"
    forced = await http.get(f"files/{meta['id']}/content", headers={"Accept": "application/json"})
    assert forced.content == raw.content
    hidden = server.add_file(b"secret", "out.txt", downloadable=False)
    denied = await http.get(f"files/{hidden['id']}/content")
    assert denied.status_code == 403
    assert error_of(denied)["type"] == "permission_error"


async def test_messages_may_attach_files(http: httpx.AsyncClient, server: FakeQoderServer) -> None:
    sid = server.add_session()["id"]
    doc = server.add_file(b"%PDF-1.7", "spec.pdf")
    assert doc["mime_type"] == "application/pdf"
    image = await upload(http, "chart.png", b"\x89PNG", "image/png")
    message = {
        "type": "user.message",
        "content": [
            {"type": "text", "text": "read these"},
            {"type": "document", "source": {"type": "file", "file_id": doc["id"]}},
            {"type": "image", "source": {"type": "file", "file_id": image["id"]}},
        ],
    }
    await send(http, sid, message)
    await server.wait_idle(sid)
    reply = next(e for e in server.stored_events(sid) if e["type"] == "agent.message")
    assert reply["content"][0]["text"].endswith(
        f"You attached 2 files: spec.pdf ({doc['id']}), chart.png ({image['id']})."
    )
    missing = {
        "type": "user.message",
        "content": [{"type": "document", "source": {"type": "file", "file_id": "file_nope"}}],
    }
    response = await send(http, sid, message, missing)
    assert response.status_code == 400
    assert error_of(response)["param"] == "events[1].content[0].source.file_id"
    assert "file_nope" in error_of(response)["message"]
    assert len(server.user_messages(sid)) == 1


async def test_request_too_large_and_overloaded() -> None:
    async with FakeQoderServer(max_body_bytes=1024) as server, client_for(server) as http:
        big = await http.post("environments", json={"name": "x" * 2000})
        assert big.status_code == 413
        assert error_of(big)["type"] == "request_too_large"
        assert big.headers["x-request-id"].startswith("req_")
        big_file = await http.post("files", files={"file": ("big.bin", b"\0" * 4096)})
        assert big_file.status_code == 413
        assert (await http.post("environments", json={"name": "small"})).status_code == 201
        server.faults.throttle_first = 2
        server.faults.throttle_status = 529
        overloaded = await http.get("sessions")
        assert overloaded.status_code == 529
        assert error_of(overloaded)["type"] == "overloaded_error"
        server.faults.throttle_status = 500
        internal = await http.get("sessions")
        assert internal.status_code == 500
        assert error_of(internal)["type"] == "api_error"


# --------------------------------------------------------------------------- session extras


async def test_session_create_with_resources_and_overrides(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    env = server.add_environment()
    agent = server.add_agent(system="Base prompt.", tools=[{"type": "agent_toolset_20260401"}])
    doc = server.add_file(b"data", "data.csv")
    created = await http.post(
        "sessions",
        json={
            "agent": {
                "type": "agent_with_overrides",
                "id": agent["id"],
                "system": "Overridden.",
                "model": {"id": "auto"},
                "mcp_servers": [{"type": "url", "name": "docs", "url": "https://mcp.example"}],
            },
            "environment_id": env["id"],
            "resources": [
                {
                    "type": "github_repository",
                    "url": "https://github.com/acme/app",
                    "checkout": {"type": "branch", "name": "main"},
                    "mount_path": "/workspace/app",
                    "authorization_token": "ghp_secret",
                },
                {"type": "file", "file_id": doc["id"], "mount_path": "/data/data.csv"},
                {"type": "memory_store", "memory_store_id": "memstore_1", "access": "read_only"},
            ],
            "vault_ids": ["vault_1"],
            "memory_store_ids": ["memstore_1"],
            "environment_variables": "A=1\nB=two=2\n",
            "budget": {"type": "limit", "max_credit_cost": "10.00"},
        },
    )
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["agent"]["system"] == "Overridden."
    assert session["agent"]["model"] == {"id": "auto"}
    assert session["agent"]["tools"] == [{"type": "agent_toolset_20260401"}]
    assert session["agent"]["mcp_servers"][0]["name"] == "docs"
    assert session["environment_variables"] == {"A": "1", "B": "two=2"}
    assert session["vault_ids"] == ["vault_1"]
    assert session["memory_store_ids"] == ["memstore_1"]
    assert session["budget"] == {"type": "limit", "max_credit_cost": "10.00"}
    repo, file_res, memory = session["resources"]
    assert re.fullmatch(r"sesrsc_[0-9a-z]{26}", repo["id"])
    assert repo["checkout"] == {"type": "branch", "name": "main"}
    assert file_res["file_id"] == doc["id"]
    assert memory["access"] == "read_only"
    assert "ghp_secret" not in created.text
    assert server.resource_secret(session["id"], repo["id"]) == "ghp_secret"

    base = {"agent": agent["id"], "environment_id": env["id"]}
    for bad, param in (
        ({"resources": [{"type": "file", "file_id": "file_nope"}]}, "resources[0].file_id"),
        ({"resources": [{"type": "floppy"}]}, "resources[0].type"),
        ({"resources": [{"type": "github_repository"}]}, "resources[0].url"),
        ({"resources": [{"type": "file", "file_id": 7}]}, "resources[0].file_id"),
        (
            {
                "resources": [
                    {"type": "github_repository", "url": "u", "checkout": {"type": "commit"}}
                ]
            },
            "resources[0].checkout.sha",
        ),
        ({"agent": {"id": agent["id"], "system": 5}}, "agent.system"),
        (
            {"resources": [{"type": "github_repository", "url": "u", "checkout": {"sha": 1}}]},
            "resources[0].checkout",
        ),
        ({"environment_variables": "no equals sign"}, "environment_variables"),
        ({"environment_variables": {"A": 1}}, "environment_variables"),
        ({"vault_ids": "vault_1"}, "vault_ids"),
        ({"budget": "lots"}, "budget"),
        ({"agent": {"type": "robot", "id": agent["id"]}}, "agent"),
    ):
        response = await http.post("sessions", json={**base, **bad})
        assert response.status_code == 400, bad
        assert error_of(response)["param"] == param, bad


async def test_session_resources_endpoints(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session()["id"]
    doc = server.add_file(b"x", "x.txt")
    assert (await http.get(f"sessions/{sid}/resources")).json()["data"] == []
    added = await http.post(
        f"sessions/{sid}/resources", json={"type": "file", "file_id": doc["id"]}
    )
    assert added.status_code == 201
    file_res = added.json()
    assert file_res["type"] == "file"
    assert file_res["mount_path"] is None
    repo = (
        await http.post(
            f"sessions/{sid}/resources",
            json={
                "type": "github_repository",
                "url": "https://github.com/acme/app",
                "checkout": {"type": "commit", "sha": "abc123"},
                "authorization_token": "old",
            },
        )
    ).json()
    listed = (await http.get(f"sessions/{sid}/resources", params={"limit": 1})).json()
    assert [r["id"] for r in listed["data"]] == [file_res["id"]]
    assert listed["has_more"] is True
    assert (await http.get(f"sessions/{sid}/resources/{repo['id']}")).json() == repo
    assert [r["id"] for r in server.session(sid)["resources"]] == [file_res["id"], repo["id"]]

    rotated = await http.post(
        f"sessions/{sid}/resources/{repo['id']}", json={"authorization_token": "new-token"}
    )
    assert rotated.status_code == 200
    assert "new-token" not in rotated.text
    assert "authorization_token" not in rotated.json()
    assert server.resource_secret(sid, repo["id"]) == "new-token"
    nothing = await http.post(f"sessions/{sid}/resources/{file_res['id']}", json={})
    assert nothing.status_code == 400
    no_token = await http.post(f"sessions/{sid}/resources/{repo['id']}", json={})
    assert error_of(no_token)["param"] == "authorization_token"

    deleted = await http.delete(f"sessions/{sid}/resources/{repo['id']}")
    assert deleted.json() == {"id": repo["id"], "type": "session_resource_deleted"}
    assert (await http.get(f"sessions/{sid}/resources/{repo['id']}")).status_code == 404
    assert server.resource_secret(sid, repo["id"]) is None
    unknown_file = await http.post(
        f"sessions/{sid}/resources", json={"type": "file", "file_id": "file_nope"}
    )
    assert unknown_file.status_code == 400
    assert error_of(unknown_file)["param"] == "body.file_id"


async def test_session_update_fields_store_session_updated(
    http: httpx.AsyncClient, server: FakeQoderServer
) -> None:
    sid = server.add_session(environment_variables={"KEEP": "1"})["id"]
    updated = await http.post(
        f"sessions/{sid}",
        json={
            "title": "t",
            "metadata": {"k": "v"},
            "environment_variables": {"TOKEN": "s3cret"},
            "agent": {"system": "Be terse.", "tools": []},
            "budget": {"type": "limit", "max_credit_cost": "1.50"},
            "vault_ids": ["vault_9"],
        },
    )
    assert updated.status_code == 200
    session = updated.json()
    assert session["title"] == "t"
    assert session["environment_variables"] == {"TOKEN": "s3cret"}
    assert session["agent"]["system"] == session["agent"]["instructions"] == "Be terse."
    assert session["agent"]["tools"] == []
    assert session["budget"]["max_credit_cost"] == "1.50"
    assert session["vault_ids"] == ["vault_9"]
    [event] = server.stored_events(sid)
    assert event["type"] == "session.updated"
    assert event["turn_id"] is None
    assert event["title"] == "t"
    assert event["agent"]["system"] == "Be terse."
    assert event["environment_variables"] == ["TOKEN"]  # names only, never values
    assert "s3cret" not in json.dumps(event)
    unchanged = await http.post(f"sessions/{sid}", json={})
    assert unchanged.status_code == 200
    assert len(server.stored_events(sid)) == 1
    bad = await http.post(f"sessions/{sid}", json={"agent": {"model": 5}})
    assert error_of(bad)["param"] == "agent.model"


async def test_agent_update_keeps_lists_and_versions_page(http: httpx.AsyncClient) -> None:
    tools = [{"type": "custom", "name": "t", "description": "d", "input_schema": {}}]
    agent = (
        await http.post(
            "agents",
            json={
                "name": "a",
                "model": "auto",
                "tools": tools,
                "mcp_servers": [{"type": "url", "name": "m", "url": "https://m"}],
                "skills": [{"type": "custom", "skill_id": "skill_1"}],
            },
        )
    ).json()
    for i in range(3):
        response = await http.post(f"agents/{agent['id']}", json={"description": f"v{i + 2}"})
        assert response.status_code == 200
    latest = (await http.get(f"agents/{agent['id']}")).json()
    assert latest["version"] == 4
    assert latest["tools"] == tools
    assert latest["mcp_servers"] == agent["mcp_servers"]
    assert latest["skills"] == agent["skills"]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 1}
    for _ in range(5):
        page = (await http.get(f"agents/{agent['id']}/versions", params=params)).json()
        seen += [v["version"] for v in page["data"]]
        if not page["has_more"]:
            break
        params = {"limit": 1, "page": page["next_page"]}
    assert seen == [4, 3, 2, 1]
    assert page["first_id"] == page["last_id"] == "1"


async def test_environment_delete_and_models_shape(http: httpx.AsyncClient) -> None:
    env = (await http.post("environments", json={"name": "e"})).json()
    updated = await http.post(
        f"environments/{env['id']}", json={"description": "d", "config": {"type": "cloud"}}
    )
    assert updated.json()["description"] == "d"
    deleted = await http.delete(f"environments/{env['id']}")
    assert deleted.json() == {"id": env["id"], "type": "environment_deleted"}
    assert (await http.get(f"environments/{env['id']}")).status_code == 404
    assert (await http.delete(f"environments/{env['id']}")).status_code == 404
    models = (await http.get("models")).json()
    assert models["has_more"] is False
    for model in models["data"]:
        assert model["type"] == "model"
        assert isinstance(model["id"], str)
        assert model["is_enabled"] is True


# --------------------------------------------------------------------------- webhooks


@asynccontextmanager
async def webhook_receiver(
    statuses: Sequence[int] = (),
) -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A local endpoint recording every POST; answers ``statuses`` in turn, then 200."""
    received: list[tuple[dict[str, str], bytes]] = []
    answers = list(statuses)

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written independently of the server's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['Webhook-ID']}.{headers['Webhook-Timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["Webhook-Signature"].split(" "))


async def test_webhooks_signed_and_retried() -> None:
    async with webhook_receiver(statuses=[500]) as (url, received):
        secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
        async with FakeQoderServer(
            webhook_url=url, webhook_secret=secret, webhook_retry_delays=(0.0,)
        ) as server:
            assert server.webhook_secret == secret
            async with client_for(server) as http:
                sid = server.add_session()["id"]
                await http.post(f"sessions/{sid}", json={"title": "t"})
                await http.post(f"sessions/{sid}/archive")
                await http.post(f"sessions/{sid}/archive")  # already archived: no event
                await http.delete(f"sessions/{sid}")
                await server.wait_webhooks()
            deliveries = server.webhook_deliveries
    assert [d.event_type for d in deliveries] == [
        "session.created",
        "session.updated",
        "session.archived",
        "session.deleted",
    ]
    assert all(d.delivered for d in deliveries)
    assert deliveries[0].statuses == [500, 200]  # retried after the 500
    assert len(received) == 5
    first, retry = received[0], received[1]
    assert first[0]["Webhook-ID"] == retry[0]["Webhook-ID"] == deliveries[0].id
    assert first[1] == retry[1]
    for headers, body in received:
        assert verify(secret, headers, body)
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert headers["User-Agent"] == "QoderCloudAgents-Webhook/1.0"
        assert re.fullmatch(r"\d+", headers["Webhook-Timestamp"])
        envelope = json.loads(body)
        assert envelope["type"] == "event"
        assert envelope["id"] == headers["Webhook-ID"]
        assert re.fullmatch(r"whe_[0-9a-z]{26}", envelope["id"])
        assert envelope["created_at"]
        assert envelope["data"]["id"] == sid
        assert envelope["data"]["type"] == headers["Webhook-Event-Type"]
        assert envelope["data"]["schema_version"] == 1
    assert not verify("whsec_" + "b3RoZXI=", *received[0])


async def test_webhooks_on_turn_end_and_giving_up() -> None:
    async with webhook_receiver(statuses=[503, 503]) as (url, received):
        async with FakeQoderServer(
            webhook_url=url,
            webhook_events_on_turn_end=True,
            webhook_retry_delays=(0.0,),
            script=tool_script("lookup", {}),
        ) as server:
            secret = server.webhook_secret
            assert secret is not None
            assert secret.startswith("whsec_")
            async with client_for(server) as http:
                sid = server.add_session()["id"]
                await send(http, sid, user_message())
                idle = await server.wait_for_event(sid, "session.status_idle")
                [use_id] = idle["stop_reason"]["event_ids"]
                answer = {"type": "user.custom_tool_result", "custom_tool_use_id": use_id}
                await send(http, sid, answer)
                await server.wait_idle(sid)
                await server.wait_webhooks()
            deliveries = server.webhook_deliveries
    # Qoder's session status webhooks: ids only, like every session webhook.
    assert [d.event_type for d in deliveries] == [
        "session.created",
        "session.status_run_started",
        "session.status_idled",  # paused for the tool result
        "session.status_run_started",
        "session.status_idled",  # the turn ended
    ]
    assert deliveries[0].statuses == [503, 503]  # given up after the last retry
    assert not deliveries[0].delivered
    for delivery in deliveries:
        data = delivery.json()["data"]
        assert data == {"type": delivery.event_type, "id": sid, "schema_version": 1}
    assert all(verify(secret, headers, body) for headers, body in received)
