"""QoderClient: configuration, resources, pagination and error mapping against the fake."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import textwrap
from urllib.parse import quote

import httpx
import pytest
from conftest import forever, run_elsewhere
from hypothesis import given
from hypothesis import strategies as st

from qoder_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    IdempotencyConflictError,
    NotFoundError,
    QoderClient,
    RetryPolicy,
    SessionBusyError,
    UserMessage,
    WrongEventLoopError,
)
from qoder_async._shell.http import _Lifecycle, segment
from qoder_async.testing import FakeQoderServer
from qoder_async.types import Accepted, AgentMessage

# ----------------------------------------------------------------------------- configuration


def test_token_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QODER_PAT", raising=False)
    monkeypatch.delenv("QODER_ACCESS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="QODER_PAT"):
        QoderClient()
    monkeypatch.setenv("QODER_ACCESS_TOKEN", "pt-access")
    assert QoderClient()._http.headers()["Authorization"] == "Bearer pt-access"
    monkeypatch.setenv("QODER_PAT", "pt-pat")
    assert QoderClient()._http.headers()["Authorization"] == "Bearer pt-pat"
    assert QoderClient(token="pt-arg")._http.headers()["Authorization"] == "Bearer pt-arg"


def test_base_url_precedence_and_http_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QODER_BASE_URL", raising=False)
    assert QoderClient(token="t").base_url == "https://api.qoder.com/api/v1/cloud"
    monkeypatch.setenv("QODER_BASE_URL", "https://api.qoder.com.cn/api/v1/cloud/")
    assert QoderClient(token="t").base_url == "https://api.qoder.com.cn/api/v1/cloud"
    assert (
        QoderClient(token="t", base_url="http://127.0.0.1:9/x").base_url == "http://127.0.0.1:9/x"
    )
    assert QoderClient(token="t", base_url="http://localhost:9").base_url == "http://localhost:9"
    assert QoderClient(token="t", base_url="http://[::1]:9").base_url == "http://[::1]:9"
    with pytest.raises(ConfigurationError, match="unencrypted"):
        QoderClient(token="t", base_url="http://api.example.com")
    assert QoderClient(
        token="t", base_url="http://api.example.com", allow_insecure_http=True
    ).base_url.startswith("http://")
    for bad in ("ftp://x", "https://x/?q=1", "not a url"):
        with pytest.raises(ConfigurationError):
            QoderClient(token="t", base_url=bad)


async def test_borrowed_http_client_is_not_closed(server: FakeQoderServer) -> None:
    async with httpx.AsyncClient() as http:
        async with QoderClient(token=server.token, base_url=server.base_url, http_client=http) as c:
            await c.environments.create(name="e")
        assert not http.is_closed
        assert c.closed


async def test_use_after_close_is_a_clear_error(server: FakeQoderServer) -> None:
    c = QoderClient(token=server.token, base_url=server.base_url)
    await c.aclose()
    await c.aclose()  # idempotent
    with pytest.raises(ClientClosedError):
        await c.sessions.retrieve("sess_x")
    with pytest.raises(ClientClosedError):
        c.session("sess_x")
    with pytest.raises(ClientClosedError):
        async with c:
            pass


# ----------------------------------------------------------------------------- resources


@pytest.mark.both_transports
async def test_resources_round_trip(client: QoderClient, server: FakeQoderServer) -> None:
    env = await client.environments.create(name="dev", description="d")
    assert env.id.startswith("env_")
    assert (env.name, env.config, env.status) == ("dev", {"type": "cloud"}, "ready")
    assert (await client.environments.retrieve(env.id)).id == env.id

    agent = await client.agents.create(name="helper", model="auto", system="be brief")
    assert agent.id.startswith("agent_")
    assert (agent.name, agent.model, agent.system, agent.version) == (
        "helper",
        "auto",
        "be brief",
        1,
    )
    updated = await client.agents.update(agent.id, system="be kind", version=1)
    assert (updated.system, updated.version) == ("be kind", 2)
    assert (await client.agents.retrieve(agent.id, version=1)).system == "be brief"

    sess = await client.sessions.create(
        agent=agent.id, environment_id=env.id, title="t", metadata={"k": "v"}
    )
    assert (sess.status, sess.title, sess.agent_id, sess.metadata) == (
        "idle",
        "t",
        agent.id,
        {"k": "v"},
    )
    assert (await client.sessions.update(sess.id, title="t2")).title == "t2"
    assert (await client.sessions.retrieve(sess.id)).title == "t2"
    cancelled = await client.sessions.cancel(sess.id)
    assert cancelled.id == sess.id
    archived = await client.sessions.archive(sess.id)
    assert archived.archived_at is not None
    with pytest.raises(BadRequestError):
        await client.sessions.events.send(sess.id, UserMessage("late"))
    deleted = await client.sessions.delete(sess.id)
    assert (deleted.id, deleted.type) == (sess.id, "session_deleted")
    with pytest.raises(NotFoundError):
        await client.sessions.retrieve(sess.id)
    assert (await client.agents.archive(agent.id)).archived_at is not None
    assert (await client.environments.archive(env.id)).archived_at is not None


@pytest.mark.both_transports
async def test_pagination_follows_cursors(client: QoderClient, server: FakeQoderServer) -> None:
    for i in range(45):
        server.add_environment(name=f"e{i}")
    names = [e.name async for e in client.environments.list(limit=10)]
    assert len(names) == 45
    assert len(set(names)) == 45
    pages = [len(p) async for p in client.environments.list(limit=20).pages()]
    assert pages == [20, 20, 5]
    gets = [r for r in server.requests if r.path.endswith("/environments") and r.method == "GET"]
    assert any("page" in r.query or "after_id" in r.query for r in gets[1:])


async def test_pagination_stops_when_a_cursor_does_not_advance(
    client: QoderClient, server: FakeQoderServer
) -> None:
    from qoder_async import APIResponseValidationError
    from qoder_async.testing import CannedResponse

    stuck = b'{"data":[{"id":"env_1"}],"has_more":true,"last_id":"env_1"}'
    server.faults.respond_next = [
        CannedResponse("GET", r"/environments$", 200, {"Content-Type": "application/json"}, stuck)
        for _ in range(3)
    ]
    with pytest.raises(APIResponseValidationError, match="did not advance"):
        [e async for e in client.environments.list()]


async def test_paging_backwards_continues_before_the_first_id(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    # A listing that starts with before_id goes on with before_id=<first_id of the page>;
    # the caller's before_id is never sent next to page= (the API answers that with a 400).
    for n in range(3):
        await (await client.session(session_id).send(f"hello {n}")).result()
    stored = [e["id"] for e in server.stored_events(session_id)]
    assert len(stored) > 7
    pages = [
        [ev.id for ev in page]
        async for page in client.sessions.events.list(
            session_id, order="asc", before_id=stored[-1], limit=3
        ).pages()
    ]
    assert [i for page in reversed(pages) for i in page] == stored[:-1]
    gets = [r.query for r in server.requests if r.path.endswith("/events") and r.method == "GET"]
    assert len(gets) == len(pages) > 2
    for query, previous in zip(gets[1:], pages, strict=False):
        assert "page" not in query
        assert "after_id" not in query
        assert query["before_id"] == [previous[0]]


@pytest.mark.both_transports
async def test_event_history_is_typed_and_paginated(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    turn = await client.session(session_id).send("hello")
    await turn.result()
    history = [ev async for ev in client.sessions.events.list(session_id, limit=3)]
    assert [ev.id for ev in history] == [e["id"] for e in server.stored_events(session_id)]
    newest = [ev async for ev in client.sessions.events.list(session_id, order="desc", limit=2)]
    assert newest[0].id == server.stored_events(session_id)[-1]["id"]
    messages = [ev async for ev in client.sessions.events.list(session_id, types=["agent.message"])]
    assert messages
    assert all(isinstance(ev, AgentMessage) for ev in messages)


# ----------------------------------------------------------------------------- send


@pytest.mark.both_transports
@pytest.mark.parametrize("turn_ids", [False, True], ids=["production-wire", "turn-ids"])
async def test_send_returns_the_202_handle(
    client: QoderClient, server: FakeQoderServer, session_id: str, turn_ids: bool
) -> None:
    server.dialect.turn_ids = turn_ids
    acc = await client.sessions.events.send(session_id, [UserMessage("hi")])
    assert isinstance(acc, Accepted)
    (created,) = acc.events
    assert isinstance(created, UserMessage)
    assert created.text == "hi"
    if turn_ids:
        assert acc.turn_id is not None
        assert acc.turn_id.startswith("turn_")
    else:
        assert acc.turn_id is None
    assert acc.last_event_id == created.id
    assert acc.request_id
    stored = server.user_messages(session_id)
    assert [m["id"] for m in stored] == [created.id]
    (post,) = [r for r in server.requests if r.method == "POST" and r.path.endswith("/events")]
    assert post.headers["idempotency-key"] == acc.idempotency_key
    await server.wait_idle(session_id)


async def test_send_accepts_raw_json_and_a_single_event(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    acc = await client.sessions.events.send(
        session_id, {"type": "user.message", "content": [{"type": "text", "text": "raw"}]}
    )
    assert isinstance(acc.events[0], UserMessage)
    await server.wait_idle(session_id)


async def test_send_takes_a_string_as_a_message_and_refuses_what_is_no_event(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    acc = await client.sessions.events.send(session_id, "plain text")
    (created,) = acc.events
    assert isinstance(created, UserMessage)
    assert created.text == "plain text"
    await server.wait_idle(session_id)
    before = len(server.user_messages(session_id))
    for bad in ([UserMessage("ok"), 42], [b"bytes"], 3.5):
        with pytest.raises(ConfigurationError, match=r"cannot send a .* as an event"):
            await client.sessions.events.send(session_id, bad)  # type: ignore[arg-type]
    assert len(server.user_messages(session_id)) == before  # nothing was posted


# ----------------------------------------------------------------------------- errors


@pytest.mark.both_transports
async def test_error_mapping(client: QoderClient, server: FakeQoderServer, session_id: str) -> None:
    with pytest.raises(NotFoundError) as nf:
        await client.sessions.retrieve("sess_does_not_exist")
    assert nf.value.status_code == 404
    assert nf.value.error_type == "not_found_error"
    assert nf.value.request_id
    assert nf.value.request_id in str(nf.value)

    async with QoderClient(token="wrong", base_url=server.base_url) as bad:
        with pytest.raises(AuthenticationError) as auth:
            await bad.sessions.retrieve(session_id)
    assert auth.value.status_code == 401

    with pytest.raises(BadRequestError) as br:
        await client.agents.create(name="", model="auto")
    assert br.value.error_type == "invalid_request_error"

    server.script = forever
    await client.sessions.events.send(session_id, UserMessage("one"))
    with pytest.raises(SessionBusyError) as busy:
        await client.sessions.events.send(session_id, UserMessage("two"))
    assert busy.value.status_code == 409
    await client.sessions.cancel(session_id)
    await server.wait_idle(session_id)
    server.script = None

    await client.sessions.events.send(session_id, UserMessage("a"), idempotency_key="k1")
    await server.wait_idle(session_id)
    with pytest.raises(IdempotencyConflictError):
        await client.sessions.events.send(session_id, UserMessage("b"), idempotency_key="k1")


@pytest.mark.both_transports
async def test_plain_text_404_route(client: QoderClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client._http.request("POST", "/sessions/sess_x/turns/turn_y/resolve", json={})
    assert info.value.error_type is None
    assert "404 page not found" in str(info.value)
    assert "check the base URL" in str(info.value)


async def test_a_wrong_base_path_says_what_the_base_url_must_be(server: FakeQoderServer) -> None:
    """A 404 that is not the API's envelope hints at the base URL."""
    root = server.base_url.removesuffix("/api/v1/cloud")
    async with QoderClient(token=server.token, base_url=root) as client:
        with pytest.raises(NotFoundError) as info:
            await client.sessions.retrieve("sess_x")
    assert "must end in /api/v1/cloud" in str(info.value)
    assert root in str(info.value)


async def test_copies_share_the_transport_and_close_nothing(server: FakeQoderServer) -> None:
    """Leaving a with_options() copy's context leaves the client open."""
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        env = await client.environments.create(name="e")
        async with client.with_options(retry=RetryPolicy(max_retries=5), timeout=5.0) as twin:
            assert twin.retry_policy.max_retries == 5
            assert (await twin.environments.retrieve(env.id)).id == env.id
        assert not client.closed
        assert (await client.environments.retrieve(env.id)).id == env.id
        assert client.retry_policy.max_retries is None
    assert client.closed
    assert twin.closed  # the copy follows its client


def test_insecure_http_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QODER_ALLOW_INSECURE_HTTP", "1")
    assert QoderClient(token="t", base_url="http://api.example.com").base_url.startswith("http:")
    monkeypatch.setenv("QODER_ALLOW_INSECURE_HTTP", "0")
    with pytest.raises(ConfigurationError, match="QODER_ALLOW_INSECURE_HTTP"):
        QoderClient(token="t", base_url="http://api.example.com")


def test_a_client_used_in_a_second_event_loop_says_what_to_do(server_url: str) -> None:
    """A QoderError that says what to do, not "Event loop is closed"."""
    run_elsewhere(_second_loop, server_url)  # loops of its own, off pytest-asyncio's thread


def _second_loop(server_url: str) -> None:
    client = QoderClient(token="t", base_url=server_url, retry=RetryPolicy(max_retries=0))

    async def use() -> None:
        with contextlib.suppress(APIConnectionError):
            await client.sessions.retrieve("sess_x")

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(use())
        with pytest.raises(WrongEventLoopError, match="create it inside the loop"):
            asyncio.run(use())
        first.run_until_complete(client.aclose())
    finally:
        first.close()
    # and once the first loop is gone (asyncio.run() called twice):
    lifecycle = _Lifecycle(client._http.transport)
    dead = asyncio.new_event_loop()
    lifecycle.loop = dead
    dead.close()

    async def check() -> None:
        lifecycle.check()

    with pytest.raises(WrongEventLoopError, match="create a new QoderClient"):
        asyncio.run(check())


@pytest.fixture
def server_url() -> str:
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1/cloud"


async def test_connection_errors_say_what_happened(server_url: str) -> None:
    """Refused reads as refused, with the host and port."""
    async with QoderClient(
        token="t", base_url=server_url, retry=RetryPolicy(max_retries=0)
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.sessions.retrieve("sess_x")
    assert not isinstance(info.value, APITimeoutError)
    port = server_url.split(":")[2].split("/")[0]
    assert f"refused by 127.0.0.1:{port}" in str(info.value)
    async with QoderClient(
        token="t",
        base_url="https://no-such-host.invalid/api/v1/cloud",
        retry=RetryPolicy(max_retries=0),
    ) as client:
        with pytest.raises(APIConnectionError, match=r"(?i)could not resolve the host"):
            await client.sessions.retrieve("sess_x")


async def test_a_throttling_gateway_does_not_lose_the_first_message(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """Default settings ride out a gateway that throttles for a while."""
    server.faults.throttle_first = 6
    server.faults.throttle_status = 503
    server.faults.retry_after = 0.05
    server.faults.fail_send_after_store = 1
    acc = await client.sessions.events.send(session_id, UserMessage("hello"))
    await server.wait_idle(session_id)
    assert [m["id"] for m in server.user_messages(session_id)] == [acc.last_event_id]
    assert server.fault_counts["throttle_first"] == 6


@pytest.mark.both_transports
async def test_a_500_after_store_is_retried_with_the_same_key_and_stored_once(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.faults.fail_send_after_store = 1  # stored, then answered 500 (the ambiguous case)
    acc = await client.sessions.events.send(session_id, UserMessage("exactly once"))
    await server.wait_idle(session_id)
    posts = [r for r in server.requests if r.method == "POST" and r.path.endswith("/events")]
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert [m["content"][0]["text"] for m in server.user_messages(session_id)] == ["exactly once"]
    assert acc.events[0].id == server.user_messages(session_id)[0]["id"]


async def test_unsafe_requests_without_a_key_are_not_retried_on_500(
    client: QoderClient, server: FakeQoderServer
) -> None:
    from qoder_async import InternalServerError
    from qoder_async.testing import CannedResponse

    body = b'{"type":"error","error":{"type":"api_error","message":"boom"}}'
    server.faults.respond_next = [
        CannedResponse("POST", r"/agents/[^/]+$", 500, {"Content-Type": "application/json"}, body)
    ]
    agent = await client.agents.create(name="a", model="auto")
    with pytest.raises(InternalServerError):
        await client.agents.update(agent.id, system="x")
    updates = [r for r in server.requests if r.method == "POST" and r.path.endswith(agent.id)]
    assert len(updates) == 1


def test_httpx_is_optional(server_url: str) -> None:
    """The default transport is aiohttp alone: httpx is the [httpx] extra."""
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["httpx"] = None
        sys.modules["httpx_sse"] = None
        import qoder_async

        async def main():
            client = qoder_async.QoderClient(
                token="t", base_url={server_url!r}, retry=qoder_async.RetryPolicy(max_retries=0)
            )
            async with client as c:
                try:
                    await c.sessions.retrieve("sess_x")
                except qoder_async.APIConnectionError as exc:
                    print("refused" if "refused" in str(exc) else exc)
            try:
                qoder_async.QoderClient(token="t", http_client=object())
            except TypeError as exc:
                print("httpx" in str(exc))

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["refused", "True"]


def test_a_borrowed_httpx_client_streams_without_httpx_sse() -> None:
    """The [httpx] extra is httpx alone: streams over a borrowed httpx.AsyncClient are
    opened by httpx itself, so a turn is followed with httpx-sse not importable."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["httpx_sse"] = None
        import httpx
        from qoder_async import QoderClient
        from qoder_async.testing import FakeQoderServer

        async def main():
            async with FakeQoderServer() as server, httpx.AsyncClient() as http:
                sid = server.add_session()["id"]
                async with QoderClient(
                    token=server.token, base_url=server.base_url, http_client=http
                ) as client:
                    result = await (await client.session(sid).send("hi")).result()
                    print(result.stop_reason, bool(result.text))

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["end_turn", "True"], out.stderr


@given(st.text(min_size=1))
def test_an_id_becomes_the_path_segment_quote_makes_of_it(value: str) -> None:
    if value in (".", "..") or any(c < " " or c == "\x7f" for c in value):
        with pytest.raises(ConfigurationError):
            segment(value)
    else:
        assert segment(value) == quote(value, safe="")
