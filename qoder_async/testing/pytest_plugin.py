"""pytest fixtures for code that talks to Qoder: a fake API and a client pointed at it.

Testing your bot
================

Installing ``qoder-async`` registers this plugin with pytest (entry point
``qoder_async``), so the fixtures are there without any import. They are
async fixtures and need **pytest-asyncio** (``pip install pytest-asyncio``),
in ``auto`` or ``strict`` mode::

    # test_bot.py
    from qoder_async.testing import TurnContext


    async def test_bot_replies(qoder_fake_server, qoder_client):
        session = qoder_fake_server.add_session()
        turn = await qoder_client.session(session["id"]).send("Hello")
        result = await turn.result()
        assert "Hello" in result.text                # the default agent echoes you


    async def test_bot_with_my_own_agent(qoder_fake_server, qoder_client):
        async def agent(ctx: TurnContext) -> None:
            await ctx.message(f"echo: {ctx.text}")

        qoder_fake_server.script = agent             # switch scripts at any time
        session = qoder_fake_server.add_session()
        result = await (await qoder_client.session(session["id"]).send("hi")).result()
        assert result.text == "echo: hi"

In strict mode mark the tests with ``@pytest.mark.asyncio``. Point your own
code at ``qoder_fake_server.base_url`` and ``qoder_fake_server.token`` if it
builds its own client (plain ``http://`` to 127.0.0.1 is accepted).

Fixtures (both function-scoped):

``qoder_fake_server``
    A started :class:`~qoder_async.testing.FakeQoderServer` on 127.0.0.1 with a
    short heartbeat interval (0.2 s); closed after the test. Use its ``faults``,
    ``dialect`` and ``script`` attributes to shape what the API does, and
    ``stored_events(...)``/``requests`` to check what your code sent.
``qoder_client``
    A :class:`~qoder_async.QoderClient` pointed at ``qoder_fake_server``;
    closed after the test.

Cassettes
=========

``@pytest.mark.qoder_cassette("cassettes/hello.jsonl")`` (the path relative to
the test file) makes ``qoder_fake_server`` replay that cassette
(``FakeQoderServer(cassette=..., speed=0)``: no waiting) instead of running an
agent. With ``pytest --qoder-record`` such a test records it instead:
``qoder_client`` talks to ``QODER_BASE_URL`` with ``QODER_PAT`` (both must be
set) inside :func:`~qoder_async.testing.record`, and ``qoder_fake_server`` is
``None`` (there is no fake)::

    @pytest.mark.qoder_cassette("cassettes/hello.jsonl")
    async def test_hello(qoder_client):
        turn = await qoder_client.session(SESSION_ID).send("Hello")
        assert (await turn.result()).stop_reason.type == "end_turn"
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    HAVE_PYTEST_ASYNCIO = False
else:
    HAVE_PYTEST_ASYNCIO = True

if TYPE_CHECKING:
    from qoder_async import QoderClient
    from qoder_async.testing import FakeQoderServer

__all__ = [
    "pytest_addoption",
    "pytest_configure",
    "pytest_pycollect_makeitem",
    "qoder_client",
    "qoder_fake_server",
]

#: Heartbeat interval of ``qoder_fake_server``: short, so stalls show up quickly.
HEARTBEAT_INTERVAL = 0.2

_NEEDS_PYTEST_ASYNCIO = (
    "the qoder_fake_server and qoder_client fixtures need pytest-asyncio: "
    "pip install pytest-asyncio"
)


def _async_fixture(func: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture``, or a fixture that fails with a clear message without it."""
    if HAVE_PYTEST_ASYNCIO:
        return pytest_asyncio.fixture(func)

    def unavailable() -> None:  # pragma: no cover - exercised only without pytest-asyncio
        pytest.fail(_NEEDS_PYTEST_ASYNCIO)

    return pytest.fixture(name=func.__name__)(unavailable)


_OUR_FIXTURES = frozenset({"qoder_fake_server", "qoder_client"})


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> None:
    """Mark ``async def`` tests that use these fixtures for pytest-asyncio.

    So they run as written in strict mode too (the default), without
    ``@pytest.mark.asyncio`` on each; tests that do not use them are untouched.
    """
    if not HAVE_PYTEST_ASYNCIO or not inspect.iscoroutinefunction(obj):
        return
    if not _OUR_FIXTURES & set(inspect.signature(obj).parameters):
        return
    marks = getattr(obj, "pytestmark", [])
    if not any(getattr(m, "name", None) == "asyncio" for m in marks):
        pytest.mark.asyncio(obj)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--qoder-record``: tests marked ``qoder_cassette`` record their cassette."""
    parser.addoption(
        "--qoder-record",
        action="store_true",
        default=False,
        help="tests marked qoder_cassette record their cassette against QODER_BASE_URL "
        "with QODER_PAT instead of replaying it",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``qoder_cassette`` marker."""
    config.addinivalue_line(
        "markers",
        "qoder_cassette(path): qoder_fake_server replays this cassette (relative to the test "
        "file); with --qoder-record the test records it",
    )


def _cassette(request: pytest.FixtureRequest) -> Path | None:
    """The cassette of the test (its ``qoder_cassette`` marker), or ``None``."""
    marker = request.node.get_closest_marker("qoder_cassette")
    if marker is None:
        return None
    if len(marker.args) != 1 or not isinstance(marker.args[0], str | os.PathLike):
        pytest.fail("@pytest.mark.qoder_cassette takes one path, e.g. 'cassettes/hello.jsonl'")
    return Path(request.path).parent / marker.args[0]


@_async_fixture
async def qoder_fake_server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[FakeQoderServer | None]:
    """A started fake Qoder API on 127.0.0.1 (heartbeat every 0.2 s); closed after the test.

    Replays the test's ``qoder_cassette`` when it has one (``None`` while recording it).
    """
    from qoder_async.testing import FakeQoderServer

    cassette = _cassette(request)
    if cassette is not None and request.config.getoption("--qoder-record", default=False):
        yield None
        return
    if cassette is not None and not cassette.exists():
        pytest.fail(
            f"no cassette {cassette}: record it with pytest --qoder-record "
            "(QODER_PAT and QODER_BASE_URL set)"
        )
    async with FakeQoderServer(
        heartbeat_interval=HEARTBEAT_INTERVAL, cassette=cassette, speed=0.0
    ) as server:
        yield server


@_async_fixture
async def qoder_client(
    request: pytest.FixtureRequest, qoder_fake_server: FakeQoderServer | None
) -> AsyncIterator[QoderClient]:
    """A ``QoderClient`` pointed at ``qoder_fake_server``; closed after the test.

    While recording a cassette (``--qoder-record``): a client of ``QODER_BASE_URL``
    with ``QODER_PAT``, recorded to the cassette.
    """
    from qoder_async import QoderClient
    from qoder_async.testing import record

    if qoder_fake_server is None:
        cassette = _cassette(request)
        assert cassette is not None
        token = os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN")
        if not token or not os.environ.get("QODER_BASE_URL"):
            pytest.fail(
                "--qoder-record records against the real API: set QODER_PAT and QODER_BASE_URL"
            )
        cassette.parent.mkdir(parents=True, exist_ok=True)
        async with QoderClient(token=token) as client, record(client, cassette):
            yield client
        return
    async with QoderClient(
        token=qoder_fake_server.token, base_url=qoder_fake_server.base_url
    ) as client:
        yield client
