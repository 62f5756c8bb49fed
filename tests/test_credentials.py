"""Refreshable credentials: ``QoderClient(token=callable)`` against a fake server whose
token rotates (``server.token = new``: the old one is answered 401 from then on).

The callable stands for a vault or a service-account exchange: it returns what
the vault holds now and counts its calls. On both transports (our aiohttp
session and a borrowed httpx client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from conftest import FAST, eventually

from qoder_async import (
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    QoderClient,
)
from qoder_async.testing import CannedResponse, FakeQoderServer, TurnContext

TOKEN_A = "sa-token-AAAAAAAAAAAAAAAA"
TOKEN_B = "sa-token-BBBBBBBBBBBBBBBB"
TOKEN_C = "sa-token-CCCCCCCCCCCCCCCC"


class Vault:
    """Holds the current token; ``fetch`` is the callable handed to the client."""

    def __init__(self, token: str, *, is_async: bool = True) -> None:
        self.token = token
        self.calls = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None  # set: fetches wait for it
        self.is_async = is_async

    def _get(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.token

    async def _aget(self) -> str:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        return self._get()

    @property
    def fetch(self) -> Callable[[], str | Awaitable[str]]:
        return self._aget if self.is_async else self._get


def rotate(server: FakeQoderServer, vault: Vault, token: str) -> None:
    """The service account's token changes: the server refuses the old one at once."""
    server.token = token
    vault.token = token


@contextlib.asynccontextmanager
async def make_client(
    server: FakeQoderServer, vault: Vault, transport: str
) -> AsyncIterator[QoderClient]:
    async with contextlib.AsyncExitStack() as stack:
        http_client = None
        if transport == "httpx":
            http_client = await stack.enter_async_context(httpx.AsyncClient())
        async with QoderClient(
            token=vault.fetch, base_url=server.base_url, http_client=http_client, reconnect=FAST
        ) as c:
            yield c


def authorizations(server: FakeQoderServer, start: int = 0, path: str = "") -> list[str]:
    return [
        r.headers.get("authorization", "").removeprefix("Bearer ")
        for r in server.requests[start:]
        if path in r.path
    ]


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_a_rotated_token_is_fetched_again_once_and_the_request_retried(
    server: FakeQoderServer, transport: str, is_async: bool
) -> None:
    server.token = TOKEN_A
    sid = str(server.add_session()["id"])
    vault = Vault(TOKEN_A, is_async=is_async)
    async with make_client(server, vault, transport) as client:
        assert vault.calls == 0  # nothing is called before the first request
        assert (await client.sessions.retrieve(sid)).id == sid
        assert vault.calls == 1
        await client.sessions.retrieve(sid)
        assert vault.calls == 1  # the token is kept
        start = len(server.requests)
        rotate(server, vault, TOKEN_B)
        assert (await client.sessions.retrieve(sid)).id == sid
        assert vault.calls == 2
        assert authorizations(server, start) == [TOKEN_A, TOKEN_B]  # the 401, then the retry
        assert TOKEN_A not in repr(client)
        assert TOKEN_B not in repr(client)


async def test_twenty_concurrent_401s_share_one_refresh(
    server: FakeQoderServer, transport: str
) -> None:
    server.token = TOKEN_A
    sid = str(server.add_session()["id"])
    vault = Vault(TOKEN_A)
    async with make_client(server, vault, transport) as client:
        vault.gate = asyncio.Event()
        first = [asyncio.create_task(client.sessions.retrieve(sid)) for _ in range(20)]
        await asyncio.sleep(0.05)
        vault.gate.set()  # 20 first requests wait for one call
        async with asyncio.timeout(30):
            await asyncio.gather(*first)
        assert vault.calls == 1
        rotate(server, vault, TOKEN_B)
        vault.gate = asyncio.Event()
        refused = [asyncio.create_task(client.sessions.retrieve(sid)) for _ in range(20)]
        await eventually(  # every one of the 20 was refused
            lambda: sum(1 for t in authorizations(server) if t == TOKEN_A) == 40, timeout=30
        )
        vault.gate.set()
        async with asyncio.timeout(30):
            results = await asyncio.gather(*refused)
        assert all(s.id == sid for s in results)
        assert vault.calls == 2


async def test_a_stream_reconnect_that_meets_a_401_refreshes_and_resumes(
    server: FakeQoderServer, transport: str
) -> None:
    server.token = TOKEN_A

    async def chatty(ctx: TurnContext) -> None:
        for i in range(4):
            await ctx.sleep(0.15)
            ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])

    server.script = chatty
    sid = str(server.add_session()["id"])
    vault = Vault(TOKEN_A)
    server.faults.drop_after_events = 1  # every connection breaks after one event
    async with make_client(server, vault, transport) as client:
        async with asyncio.timeout(30):
            turn = await client.session(sid).send("hi")
            seen: list[str] = []
            start: int | None = None
            async with turn:
                async for ev in turn:
                    if ev.type == "agent.message" and start is None:
                        start = len(server.requests)
                        rotate(server, vault, TOKEN_B)
                    if ev.type == "agent.message":
                        seen.append(ev.content[0].text)  # type: ignore[attr-defined]
        assert seen == [f"part {i}" for i in range(4)]
        assert start is not None
        # The next connection went out with the old token (401), then with the new one.
        streams = authorizations(server, start, path="/stream")
        assert streams[0] == TOKEN_A
        assert set(streams[1:]) == {TOKEN_B}
        assert vault.calls == 2


async def test_a_refresh_that_raises_fails_the_request_with_the_401_caused_by_it(
    server: FakeQoderServer, transport: str
) -> None:
    server.token = TOKEN_A
    sid = str(server.add_session()["id"])
    vault = Vault(TOKEN_A)
    async with make_client(server, vault, transport) as client:
        await client.sessions.retrieve(sid)
        rotate(server, vault, TOKEN_B)
        vault.error = RuntimeError("vault sealed")
        with pytest.raises(AuthenticationError) as info:
            await client.sessions.retrieve(sid)
        assert info.value.status_code == 401
        assert info.value.request_id is not None  # the server's answer
        assert info.value.__cause__ is vault.error
        for token in (TOKEN_A, TOKEN_B):
            assert token not in str(info.value)
            assert token not in repr(info.value)
        vault.error = None  # the vault is back: the next request refreshes again
        await client.sessions.retrieve(sid)
        assert vault.calls == 3


async def test_a_first_call_that_raises_sends_nothing(
    server: FakeQoderServer, transport: str
) -> None:
    vault = Vault(TOKEN_A)
    vault.error = OSError("no route to vault")
    async with make_client(server, vault, transport) as client:
        with pytest.raises(AuthenticationError, match="token callable raised OSError") as info:
            await client.sessions.retrieve("sess_1")
        assert info.value.__cause__ is vault.error
        assert server.requests == []


@pytest.mark.parametrize("bad", ["", "  ", None, 42, "tok\r\nX-Evil: 1"])
async def test_a_callable_returning_no_token_is_a_configuration_error(
    server: FakeQoderServer, bad: object
) -> None:
    async with QoderClient(token=lambda: bad, base_url=server.base_url) as client:  # type: ignore[arg-type, return-value]
        with pytest.raises(ConfigurationError):
            await client.sessions.retrieve("sess_1")
    assert server.requests == []


async def test_a_token_refused_after_a_refresh_is_not_refreshed_again(
    server: FakeQoderServer, transport: str
) -> None:
    vault = Vault("sa-token-never-valid-XXXXXX")
    async with make_client(server, vault, transport) as client:
        with pytest.raises(AuthenticationError):
            await client.sessions.retrieve("sess_1")
    assert vault.calls == 2  # the first call, and one refresh after the 401
    assert len(server.requests) == 2


async def test_every_token_the_callable_returned_is_redacted_from_server_text(
    server: FakeQoderServer, transport: str
) -> None:
    server.token = TOKEN_A
    sid = str(server.add_session()["id"])
    vault = Vault(TOKEN_A)
    async with make_client(server, vault, transport) as client:
        await client.sessions.retrieve(sid)
        rotate(server, vault, TOKEN_B)
        await client.sessions.retrieve(sid)
        rotate(server, vault, TOKEN_C)
        await client.sessions.retrieve(sid)
        echo = f"tokens seen: {TOKEN_A} {TOKEN_B} {TOKEN_C}"
        server.faults.respond_next.append(
            CannedResponse(
                "GET",
                f"/sessions/{sid}$",
                400,
                {"Content-Type": "application/json"},
                json.dumps({"error": {"type": "invalid_request_error", "message": echo}}).encode(),
            )
        )
        with pytest.raises(BadRequestError) as info:
            await client.sessions.retrieve(sid)
        text = f"{info.value} {info.value!r} {info.value.body}"
        for token in (TOKEN_A, TOKEN_B, TOKEN_C):
            assert token not in text
        assert "<redacted>" in text


async def test_closing_the_client_cancels_a_token_call_in_progress(
    server: FakeQoderServer,
) -> None:
    vault = Vault(TOKEN_A)
    vault.gate = asyncio.Event()  # the vault never answers
    client = QoderClient(token=vault.fetch, base_url=server.base_url)
    request = asyncio.create_task(client.sessions.retrieve("sess_1"))
    await eventually(lambda: client._http._secret._task is not None)
    async with asyncio.timeout(10):
        await client.aclose()
        with pytest.raises(ClientClosedError):
            await request
    assert server.requests == []
