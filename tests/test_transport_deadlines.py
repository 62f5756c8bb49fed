"""The aiohttp transport's shared deadline timer keeps every request's total timeout.

Totals of a few seconds and more are watched by one timer per transport instead
of one per request; these tests shrink its thresholds so nothing waits long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from qoder_async import APITimeoutError
from qoder_async._shell import transport as transport_module
from qoder_async._shell.transport import AiohttpTransport, Timeout


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    done = asyncio.Event()  # set at teardown: no handler outlives the test

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), float(request.query.get("sleep", "0")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        done.set()
        await runner.cleanup()


@pytest.fixture
def shared_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "_SHARED_DEADLINE_FROM", 0.1)
    monkeypatch.setattr(transport_module, "_DEADLINE_TICK", 0.02)


async def _get(transport: AiohttpTransport, url: str, total: float) -> int:
    answer = await transport.request(
        "GET", url, params=None, headers={}, content=None, timeouts=Timeout(total, None)
    )
    return answer.status


@pytest.mark.usefixtures("shared_timer")
async def test_a_late_answer_times_out_and_the_task_is_not_left_cancelled(base_url: str) -> None:
    transport = AiohttpTransport()
    try:
        with pytest.raises(APITimeoutError):
            await _get(transport, f"{base_url}/slow?sleep=5", total=0.2)
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await asyncio.sleep(0)  # no stray cancellation is pending either
        assert await _get(transport, f"{base_url}/slow", total=0.2) == 200
    finally:
        await transport.aclose()


@pytest.mark.usefixtures("shared_timer")
async def test_answers_in_time_are_kept(base_url: str) -> None:
    transport = AiohttpTransport()
    try:
        statuses = await asyncio.gather(
            *(_get(transport, f"{base_url}/slow?sleep=0.05", total=5.0) for _ in range(20))
        )
        assert statuses == [200] * 20
    finally:
        await transport.aclose()


@pytest.mark.usefixtures("shared_timer")
async def test_a_cancellation_of_the_caller_is_not_a_timeout(base_url: str) -> None:
    transport = AiohttpTransport()
    try:
        call = asyncio.ensure_future(_get(transport, f"{base_url}/slow?sleep=5", total=2.0))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await transport.aclose()


async def test_short_totals_keep_their_exact_timer(base_url: str) -> None:
    transport = AiohttpTransport()
    try:
        with pytest.raises(APITimeoutError):
            await _get(transport, f"{base_url}/slow?sleep=5", total=0.1)
    finally:
        await transport.aclose()
