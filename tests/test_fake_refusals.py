"""The fake refuses what the API refuses: each malformed request is a 400 naming its field.

A user's bot tested against the fake learns of a bad request there, not in production.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from qoder_async.testing import FakeQoderServer

SESSION = {"agent": "{agent}", "environment_id": "{env}"}
MESSAGE = {"type": "user.message", "content": [{"type": "text", "text": "hi"}]}

# (method, path with {agent}/{session}/{env}, JSON body or raw query, the param named)
CASES: list[tuple[str, str, Any, str | None]] = [
    ("GET", "/sessions?page=not-a-cursor", None, "page"),
    ("GET", "/sessions?limit=ten", None, "limit"),
    ("GET", "/agents?include_archived=maybe", None, "include_archived"),
    ("POST", "/sessions", {"agent": {"id": "{agent}", "version": "2"}}, "agent"),
    ("POST", "/sessions", {"agent": 7}, "agent"),
    ("POST", "/sessions", {**SESSION, "metadata": {"k": 1}}, "metadata"),
    (
        "POST",
        "/sessions",
        {**SESSION, "metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata",
    ),
    ("POST", "/sessions", {**SESSION, "resources": ["repo"]}, "resources[0]"),
    (
        "POST",
        "/sessions",
        {
            **SESSION,
            "resources": [{"type": "memory_store", "memory_store_id": "m", "access": "all"}],
        },
        "resources[0].access",
    ),
    (
        "POST",
        "/sessions",
        {**SESSION, "environment_variables": {"": "x"}},
        "environment_variables",
    ),
    (
        "POST",
        "/sessions/{session}/events",
        {"events": [{**MESSAGE, "content": []}]},
        "events[0].content",
    ),
    (
        "POST",
        "/sessions/{session}/events",
        {"events": [{**MESSAGE, "content": [{"text": "no type"}]}]},
        "events[0].content",
    ),
    (
        "POST",
        "/sessions/{session}/events",
        {
            "events": [
                {"type": "user.custom_tool_result", "custom_tool_use_id": "t", "is_error": "yes"}
            ]
        },
        "events[0].is_error",
    ),
    (
        "POST",
        "/sessions/{session}/events",
        {"events": [{"type": "user.tool_confirmation", "result": "allow"}]},
        "events[0]",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), CASES)
async def test_a_malformed_request_is_a_400_naming_its_field(
    server: FakeQoderServer, method: str, path: str, body: Any, param: str | None
) -> None:
    agent = server.add_agent()["id"]
    session = server.add_session(agent)["id"]
    ids = {"{agent}": agent, "{session}": session, "{env}": server.add_environment()["id"]}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return ids.get(value, value.replace("{session}", session))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    headers = {"Authorization": f"Bearer {server.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, server.base_url + fill(path), json=fill(body)) as resp,
    ):
        answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"].get("param") == param, answer


async def test_a_malformed_upload_is_a_400(server: FakeQoderServer) -> None:
    headers = {
        "Authorization": f"Bearer {server.token}",
        "Content-Type": "multipart/form-data; boundary=xyz",
    }
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(server.base_url + "/files", data=b"not a multipart body") as resp,
    ):
        answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
