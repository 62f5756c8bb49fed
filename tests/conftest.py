"""Shared fixtures: the pytest plugin's fake Qoder server, and a client pointed at it.

``server`` is the plugin's ``qoder_fake_server`` (what users get); ``client``
runs on our aiohttp transport, and on a borrowed httpx client as well where the
test is marked ``both_transports`` (the tests whose outcome goes through the
transport: requests, bodies, streams, timeouts, errors, downloads). Every async
test runs with asyncio debug mode on and fails if it leaves a task, an SSE
connection or an unclosed socket behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from qoder_async import Backoff, QoderClient, ReconnectPolicy
from qoder_async.testing import FakeQoderServer, TurnContext
from qoder_async.testing._wire import dumps, sse_frame

TRANSPORTS = ("aiohttp", "httpx")
"""What ``client`` runs on: the default first; all of them under ``both_transports``."""


_T = TypeVar("_T")


def run_elsewhere(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a thread of its own, for sync tests that run an event loop.

    ``asyncio.run()`` on the main thread unsets the thread's current loop when
    it ends; a loop pytest-asyncio left there is then dropped unclosed and its
    sockets reach a later, unrelated test as a ResourceWarning
    (pytest-dev/pytest-asyncio#724). A thread has no current loop to lose.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def run_loop_elsewhere(coro: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(coro)`` in a thread of its own (see :func:`run_elsewhere`)."""
    return run_elsewhere(asyncio.run, coro)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_transports: run the test's `client` on every transport (aiohttp and httpx)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "client" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_transports"
    ):
        metafunc.parametrize("client", TRANSPORTS, indirect=True)


def turn_record(server: FakeQoderServer, sid: str, anchor: str) -> list[str]:
    """The stored events of the turn whose user.message is ``anchor``, after it.

    Read from the server's own record (which keeps every event's ``turn_id``
    whatever the wire sends), so it holds under any dialect.
    """
    events = server.stored_events(sid)
    turn_id = next(e["turn_id"] for e in events if e["id"] == anchor)
    return [e["id"] for e in events if e.get("turn_id") == turn_id and e["id"] != anchor]


def held_message(
    pieces: list[str], held: int, gate: asyncio.Event
) -> Callable[[TurnContext], Awaitable[None]]:
    """A turn script whose ``agent.message`` preview stays in flight.

    It publishes the preview's ``event_start`` and its first ``held`` deltas at
    once, waits for ``gate``, then the other deltas and the stored message.
    (Reaches into the fake's session state: a test of the fake's preview rules.)
    """

    async def script(ctx: TurnContext) -> None:
        session = ctx._session
        event_id = session.ids.event()
        start = {"type": "event_start", "event": {"id": event_id, "type": "agent.message"}}
        session.publish_preview(
            event_id, "agent.message", sse_frame(event_id, "event_start", dumps(start))
        )

        def delta(piece: str) -> None:
            data = {
                "type": "event_delta",
                "event_id": event_id,
                "delta": {
                    "type": "content_delta",
                    "index": 0,
                    "content": {"type": "text", "text": piece},
                },
            }
            session.publish_preview(
                event_id, "agent.message", sse_frame(event_id, "event_delta", dumps(data))
            )

        for piece in pieces[:held]:
            delta(piece)
        await gate.wait()
        for piece in pieces[held:]:
            delta(piece)
        ctx._store(
            "agent.message", {"content": [{"type": "text", "text": "".join(pieces)}]}, event_id
        )

    return script


async def eventually(
    check: Callable[[], object], what: str | None = None, *, timeout: float = 15.0
) -> None:
    """Return as soon as ``check()`` (a function, or an async one) is true.

    Fails with an AssertionError naming ``what`` (or the check's source) if it
    is still false after ``timeout`` seconds: a bound against hangs, not a timing.
    """
    try:
        async with asyncio.timeout(timeout) as deadline:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        if not deadline.expired():
            raise  # the check's own timeout, not ours
        if what is None:
            try:
                what = inspect.getsource(check).strip()
            except (OSError, TypeError):
                what = getattr(check, "__qualname__", repr(check))
        raise AssertionError(f"timed out after {timeout} s waiting for: {what}") from None


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
    try:
        await eventually(lambda: not leftover_tasks(), "the test's tasks to end", timeout=5.0)
    except AssertionError:
        pytest.fail(f"a test leaked tasks: {leftover_tasks()}")


@pytest.fixture
def server(qoder_fake_server: FakeQoderServer) -> FakeQoderServer:
    """The plugin's fake server (heartbeats every 0.2 s)."""
    return qoder_fake_server


@pytest.fixture
async def client(
    server: FakeQoderServer, request: pytest.FixtureRequest
) -> AsyncIterator[QoderClient]:
    """A client on our own aiohttp session; under ``both_transports``, on a borrowed httpx
    client too."""
    async with contextlib.AsyncExitStack() as stack:
        http_client = None
        if getattr(request, "param", TRANSPORTS[0]) == "httpx":
            http_client = await stack.enter_async_context(httpx.AsyncClient())
        async with QoderClient(
            token=server.token, base_url=server.base_url, http_client=http_client
        ) as c:
            yield c
        if http_client is not None:
            assert not http_client.is_closed, "a borrowed client must never be closed"
    # The server's own tasks (a turn's script) live on until it closes; its stream count
    # is what says the client let go of every connection.
    await eventually(
        lambda: server.open_streams == 0, "the test's SSE connections to close", timeout=5.0
    )


@pytest.fixture
def session_id(server: FakeQoderServer) -> str:
    return str(server.add_session()["id"])
