"""README patterns that only prove themselves when something goes wrong, run as written.

* "Turns": the aiohttp chat handler, served with ``handler_cancellation=True``;
  a caller that hangs up mid-reply stops the turn on the server.
* "Tracing": the program, with nothing but the SDK the README names, exports
  the turn's span.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from qoder_async.testing import FakeQoderServer, TurnContext

README = Path(__file__).resolve().parent.parent / "README.md"
HANG = 30.0  # seconds: only a hang takes this long


def readme_block(containing: str) -> str:
    """The one README ``python`` block holding ``containing``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README blocks hold {containing!r}"
    return found[0]


def load(block: str, where: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(block, where, "exec"), namespace)  # our own README
    return namespace


async def talks_then_waits(ctx: TurnContext) -> None:
    await ctx.message("Working on it", chunks=1)
    await ctx.sleep(60)


async def until(predicate: Any) -> None:
    async with asyncio.timeout(HANG):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_the_aiohttp_chat_handler_stops_the_turn_of_a_caller_who_hung_up(
    server: FakeQoderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QODER_PAT", server.token)
    monkeypatch.setenv("QODER_BASE_URL", server.base_url)
    monkeypatch.delenv("QODER_ACCESS_TOKEN", raising=False)
    ns = load(readme_block("handler_cancellation=True"), "<README Turns>")
    server.script = talks_then_waits
    sid = str(server.add_session()["id"])

    def interrupts() -> int:
        return [e["type"] for e in server.stored_events(sid)].count("user.interrupt")

    runner = web.AppRunner(ns["make_app"](), handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/chat"
        async with aiohttp.ClientSession() as http:
            response = await http.post(url, json={"session_id": sid, "text": "hi"})
            first = await asyncio.wait_for(response.content.readany(), HANG)
            assert first == b"Working on it"
            assert interrupts() == 0
            response.close()  # the caller hangs up mid-reply
        await until(lambda: interrupts() == 1)
        await asyncio.wait_for(server.wait_idle(sid), HANG)  # the server's turn ended
    finally:
        await runner.cleanup()
    assert interrupts() == 1


async def test_the_tracing_program_exports_the_turns_span(tmp_path: Path) -> None:
    program = tmp_path / "traced.py"
    program.write_text(readme_block("ConsoleSpanExporter()"))
    async with FakeQoderServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
        env.update(QODER_PAT=server.token, QODER_BASE_URL=server.base_url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(program),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), HANG)
    assert proc.returncode == 0, err.decode()
    assert '"name": "invoke_agent"' in out.decode()
    assert '"gen_ai.provider.name": "qoder"' in out.decode()
