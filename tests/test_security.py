"""Secrets and origins, and what the client logs."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import ssl
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web

from qoder_async import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    QoderClient,
    QoderError,
    RetryPolicy,
    StreamDecodeError,
    UserMessage,
)
from qoder_async._api.resources import _Resource
from qoder_async.testing import CannedResponse, FakeQoderServer

CANARY = "pt-CANARY-7f3a9c1e5b2d4f60"
JSON = {"Content-Type": "application/json"}


async def test_the_token_appears_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qoder_async")
    texts: list[str] = []
    async with FakeQoderServer(token=CANARY, heartbeat_interval=0.1) as server:
        sid = server.add_session()["id"]
        async with QoderClient(
            token=CANARY, base_url=server.base_url, retry=RetryPolicy(max_retries=1)
        ) as client:
            texts += [repr(client), str(client), repr(vars(client))]
            session = client.session(sid)
            turn = await session.send("hello")
            result = await turn.result()
            texts += [repr(session), repr(turn), repr(turn.accepted), repr(result)]
            async with client.sessions.events.stream(sid) as st:
                texts.append(repr(st))
                async for _ in st:
                    break
            errors: list[BaseException] = []
            for call in (
                client.sessions.retrieve("sess_missing"),
                client.agents.create(name="", model="x"),
            ):
                try:
                    await call
                except APIStatusError as exc:
                    errors.append(exc)
            server.faults.throttle_first = 5
            server.faults.retry_after = 0.01
            try:
                await client.sessions.retrieve(sid)
            except APIStatusError as exc:
                errors.append(exc)
            server.faults.throttle_first = 0
            server.faults.inject_frames = [b"data: {bad\n\n"]
            try:
                async with client.sessions.events.stream(sid) as st:
                    async for _ in st:
                        pass
            except StreamDecodeError as exc:
                errors.append(exc)
            for exc in errors:
                texts += [str(exc), repr(exc), repr(vars(exc)), repr(exc.args)]
        async with QoderClient(token="pt-wrong", base_url=server.base_url) as other:
            with pytest.raises(AuthenticationError) as auth:
                await other.sessions.retrieve(sid)
            texts += [str(auth.value), repr(vars(auth.value))]
    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    assert len(errors) == 4
    assert any("GET /sessions/" in r.getMessage() for r in caplog.records)
    for text in texts:
        assert CANARY not in text
    assert "pt-wrong" not in " ".join(texts)


async def test_server_text_that_echoes_the_token_is_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway that echoes request headers does not leak the token."""
    caplog.set_level(logging.DEBUG, logger="qoder_async")
    echo = f"GET /x HTTP/1.1\r\nAuthorization: Bearer {CANARY}\r\nX-Token: {CANARY}"
    envelope = json.dumps(
        {"type": "error", "error": {"type": "authentication_error", "message": echo}}
    ).encode()
    html = f"<html><pre>{echo}</pre></html>".encode()
    async with FakeQoderServer(token=CANARY) as server:
        sid = server.add_session()["id"]
        server.faults.respond_next = [
            CannedResponse(
                "GET", "/sessions/", 401, {"Content-Type": "application/json"}, envelope
            ),
            CannedResponse("GET", "/sessions/", 400, {"Content-Type": "text/html"}, html),
            CannedResponse("GET", "/sessions/", 200, {"Content-Type": "text/html"}, html),
            CannedResponse("GET", "/stream$", 200, {"Content-Type": "text/html"}, html),
        ]
        errors: list[BaseException] = []
        async with QoderClient(
            token=CANARY, base_url=server.base_url, retry=RetryPolicy(max_retries=0)
        ) as client:
            for _ in range(3):
                try:
                    await client.sessions.retrieve(sid)
                except QoderError as exc:
                    errors.append(exc)
            try:
                async with client.sessions.events.stream(sid) as st:
                    await st.__anext__()
            except QoderError as exc:
                errors.append(exc)
            server.faults.inject_frames = [f"id: x\ndata: {{{echo!r}\n\n".encode()]
            try:
                async with client.sessions.events.stream(sid) as st:
                    async for _ in st:
                        pass
            except QoderError as exc:
                errors.append(exc)
            other = "pt-SOMEONE-ELSES-TOKEN-123"
            server.faults.respond_next = [
                CannedResponse(
                    "GET",
                    "/sessions/",
                    403,
                    {},
                    f"forwarded Authorization: Bearer {other}".encode(),
                )
            ]
            try:
                await client.sessions.retrieve(sid)
            except QoderError as exc:
                errors.append(exc)
    assert len(errors) == 6
    texts = [caplog.text]
    for exc in errors:
        texts += [str(exc), repr(exc), repr(vars(exc)), "".join(traceback.format_exception(exc))]
    joined = "\n".join(texts)
    assert CANARY not in joined
    assert other not in joined
    assert "<redacted>" in joined
    assert "Authorization: Bearer <redacted>" in joined


async def test_authorization_never_follows_a_redirect_to_another_origin() -> None:
    async with FakeQoderServer(token=CANARY) as api, FakeQoderServer(token="other") as evil:
        target = evil.base_url + "/sessions/sess_x"
        api.faults.respond_next = [
            CannedResponse("GET", "/sessions/", 302, {"Location": target}, b""),
            CannedResponse("GET", "/sessions/", 307, {"Location": target}, b""),
        ]
        async with QoderClient(token=CANARY, base_url=api.base_url) as client:
            with pytest.raises(APIStatusError) as info:
                await client.sessions.retrieve("sess_x")
        assert info.value.status_code == 302
        # a borrowed client that follows redirects does not change that
        async with httpx.AsyncClient(follow_redirects=True) as http:
            async with QoderClient(token=CANARY, base_url=api.base_url, http_client=http) as c:
                with pytest.raises(APIStatusError) as info:
                    await c.sessions.retrieve("sess_x")
        assert info.value.status_code == 307
        assert evil.requests == []


async def test_stream_redirects_are_not_followed_either() -> None:
    async with FakeQoderServer(token=CANARY) as api, FakeQoderServer(token="other") as evil:
        sid = api.add_session()["id"]
        target = f"{evil.base_url}/sessions/{sid}/events/stream"
        api.faults.respond_next = [
            CannedResponse("GET", "/stream$", 301, {"Location": target}, b"")
        ]
        async with QoderClient(token=CANARY, base_url=api.base_url) as client:
            async with client.sessions.events.stream(sid) as st:
                with pytest.raises(APIStatusError) as info:
                    await st.__anext__()
        assert info.value.status_code == 301
        assert evil.requests == []


def methods_taking_ids(root: object) -> list[tuple[str, Callable[..., Any], list[str]]]:
    """Every public method of every resource reachable from ``root`` with an ``*_id`` (or a
    skill's ``version``) argument passed by position (the ids that go into the URL path),
    found by walking the attributes: a method added later is covered without touching
    this test."""
    found: list[tuple[str, Callable[..., Any], list[str]]] = []
    todo: list[tuple[str, object]] = [("client", root)]
    seen: set[int] = set()
    while todo:
        name, obj = todo.pop()
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            value = getattr(obj, attr)
            if isinstance(value, _Resource) and id(value) not in seen:
                seen.add(id(value))
                todo.append((f"{name}.{attr}", value))
            elif isinstance(obj, _Resource) and inspect.ismethod(value):
                params = inspect.signature(value).parameters.values()
                ids = [
                    p.name
                    for p in params
                    if (p.name.endswith("_id") or p.name == "version")
                    and p.kind is p.POSITIONAL_OR_KEYWORD
                ]
                if ids:
                    found.append((f"{name}.{attr}", value, ids))
    return found


# The keyword arguments some id-taking methods require (``resource.method``).
REQUIRED_ARGUMENTS: dict[str, dict[str, Any]] = {
    "events.send": {"events": [UserMessage("hi")]},
    "credentials.create": {"auth": {"type": "static_bearer", "token": "t"}},
    "versions.create": {"files": [("SKILL.md", b"x")]},
    "memories.create": {"path": "/x.md", "content": "x"},
    "work.update": {"metadata": {}},
}


@pytest.mark.parametrize("bad", [".", "..", "a\r\nX-Evil: 1", "\n", "x\x00", "tab\there"])
async def test_no_id_can_retarget_a_request(bad: str) -> None:
    # "..": DELETE /sessions/{sid}/resources/.. would be DELETE /sessions/{sid}/ once any URL
    # library (yarl, httpx) normalises the path; CR/LF/NUL have no business in an id either.
    async with FakeQoderServer() as server:
        async with QoderClient(token=server.token, base_url=server.base_url) as client:
            methods = methods_taking_ids(client)
            names = {name for name, _, _ in methods}
            assert {
                "client.files.delete",
                "client.sessions.resources.delete",
                "client.deployments.runs.retrieve",
                "client.deployment_runs.retrieve",
                "client.dreams.cancel",
                "client.environments.work.heartbeat",
                "client.vaults.credentials.mcp_oauth_validate",
                "client.skills.versions.create",
                "client.memory_stores.memories.delete",
                "client.memory_stores.memory_versions.redact",
            } <= names
            assert len(methods) >= 70
            for name, method, ids in methods:
                extra = REQUIRED_ARGUMENTS.get(".".join(name.split(".")[-2:]), {})
                for position in range(len(ids)):
                    args = ["x_1"] * len(ids)
                    args[position] = bad
                    with pytest.raises(ConfigurationError, match="id") as info:
                        result = method(*args, **extra)
                        if inspect.isawaitable(result):
                            await result
                    assert repr(bad) in str(info.value), name
            # and a session handle's requests
            with pytest.raises(ConfigurationError, match="id"):
                await client.session(bad).send("hi")
        assert server.requests == []


@pytest.fixture
async def tls_server() -> AsyncIterator[tuple[str, trustme.CA]]:
    """An HTTPS server on 127.0.0.1 whose certificate only a test CA vouches for."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "sess_1", "type": "session", "status": "idle"})

    app = web.Application()
    app.router.add_get("/api/v1/cloud/sessions/{id}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/api/v1/cloud", ca
    await runner.cleanup()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_tls_is_verified_on_both_transports(
    tls_server: tuple[str, trustme.CA], transport: str
) -> None:
    base_url, ca = tls_server
    async with contextlib.AsyncExitStack() as stack:
        borrowed = None
        if transport == "httpx":
            borrowed = await stack.enter_async_context(httpx.AsyncClient())
        async with QoderClient(
            token="t", base_url=base_url, retry=RetryPolicy(max_retries=0), http_client=borrowed
        ) as client:
            with pytest.raises(APIConnectionError, match=r"TLS certificate of 127\.0\.0\.1"):
                await client.sessions.retrieve("sess_1")
    # trusting the CA (a borrowed session with its own SSL context) works
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with contextlib.AsyncExitStack() as stack:
        own: Any
        if transport == "httpx":
            own = await stack.enter_async_context(httpx.AsyncClient(verify=trusted))
        else:
            own = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted))
            )
        async with QoderClient(token="t", base_url=base_url, http_client=own) as client:
            assert (await client.sessions.retrieve("sess_1")).id == "sess_1"
        assert not own.closed if transport == "aiohttp" else not own.is_closed


@pytest.mark.both_transports
async def test_normal_operation_logs_nothing_at_info_or_above(
    caplog: pytest.LogCaptureFixture, client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    caplog.set_level(logging.INFO, logger="qoder_async")
    server.faults.drop_probability = 0.3  # reconnects are normal operation too
    turn = await client.session(session_id).send("hello")
    await turn.result()
    server.faults.drop_probability = 0
    assert [r for r in caplog.records if r.name.startswith("qoder_async")] == []


@pytest.mark.both_transports
async def test_debug_lines_say_what_happened(
    caplog: pytest.LogCaptureFixture, client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="qoder_async")
    server.faults.throttle_first = 1
    server.faults.retry_after = 0.01
    with pytest.raises(NotFoundError):
        await client.sessions.retrieve("sess_nope")
    messages = [r.getMessage() for r in caplog.records]
    assert any("-> 429" in m for m in messages)
    assert any(m.startswith("GET /sessions/sess_nope failed (attempt 1): 429") for m in messages)
    assert any("-> 404 [req_" in m and "ms" in m for m in messages)


def test_qoder_log_env_var_switches_debug_logging_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from qoder_async._shell.http import _setup_logging

    logger = logging.getLogger("qoder_async")
    level, handlers = logger.level, list(logger.handlers)
    try:
        monkeypatch.setenv("QODER_LOG", "debug")
        _setup_logging()
        assert logger.level == logging.DEBUG
        assert logger.handlers
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


@pytest.mark.parametrize("before", [b"", b'id: e0\nevent: agent.message\ndata: {"id":"e0"}\n\n'])
async def test_an_error_event_on_a_stream_is_redacted(before: bytes) -> None:
    """Whether or not other events of the same read come first."""
    envelope = {"type": "error", "error": {"type": "api_error", "message": f"echo {CANARY}"}}
    frame = before + b"event: error\ndata: " + json.dumps(envelope).encode() + b"\n\n"
    async with FakeQoderServer(token=CANARY) as server:
        sid = server.add_session()["id"]
        server.faults.inject_frames = [frame]
        async with QoderClient(token=CANARY, base_url=server.base_url) as client:
            with pytest.raises(APIStatusError) as info:
                async with client.sessions.events.stream(sid) as st:
                    async for _ in st:
                        pass
    exc = info.value
    text = "".join([str(exc), repr(exc), repr(vars(exc)), *traceback.format_exception(exc)])
    assert CANARY not in text
    assert "<redacted>" in text
