"""Shared fixtures: the pytest plugin's fake Qoder server, and a client on each transport.

``server`` is the plugin's ``qoder_fake_server`` (what users get); ``client``
runs every test that uses it twice, on our aiohttp transport and on a borrowed
httpx client. Every async test runs with asyncio debug mode on and fails if it
leaves a task, an SSE connection or an unclosed socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from qoder_async import Backoff, QoderClient, ReconnectPolicy
from qoder_async.testing import FakeQoderServer, TurnContext


async def settle(server: FakeQoderServer | None = None, timeout: float = 5.0) -> None:
    """Let closing connections and tasks finish (a few loop turns, bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            await asyncio.sleep(0.01)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if not others and (server is None or server.open_streams == 0):
                return


async def no_open_streams(server: FakeQoderServer, timeout: float = 2.0) -> int:
    """Wait (bounded) for the server to see every SSE connection closed; the count left."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while server.open_streams:
                await asyncio.sleep(0.01)
    return server.open_streams


FAST = ReconnectPolicy(backoff=Backoff(initial=0.01, maximum=0.05), max_attempts=50)
"""Reconnect at once (tests drop connections on purpose), and give up late."""


async def forever(ctx: TurnContext) -> None:
    """A fake agent script whose turn does not end by itself."""
    await ctx.sleep(30)


def leftover_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Set up first, torn down last: after the fake server and every client closed."""
    assert asyncio.get_running_loop().get_debug(), "tests must run in asyncio debug mode"
    yield
    with contextlib.suppress(TimeoutError):
        await settle()
    assert leftover_tasks() == [], "a test leaked tasks"


@pytest.fixture
def server(qoder_fake_server: FakeQoderServer) -> FakeQoderServer:
    """The plugin's fake server (heartbeats every 0.2 s)."""
    return qoder_fake_server


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(
    server: FakeQoderServer, request: pytest.FixtureRequest
) -> AsyncIterator[QoderClient]:
    """A client on each transport: our own aiohttp session, and a borrowed httpx client."""
    async with contextlib.AsyncExitStack() as stack:
        http_client = None
        if request.param == "httpx":
            http_client = await stack.enter_async_context(httpx.AsyncClient())
        async with QoderClient(
            token=server.token, base_url=server.base_url, http_client=http_client
        ) as c:
            yield c
        if http_client is not None:
            assert not http_client.is_closed, "a borrowed client must never be closed"
    with contextlib.suppress(TimeoutError):
        await settle(server)
    assert server.open_streams == 0, "a test left an SSE connection open"


@pytest.fixture
def session_id(server: FakeQoderServer) -> str:
    return str(server.add_session()["id"])
