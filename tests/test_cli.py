"""The ``qoder-async`` command line against a fake server in this process.

Commands run to completion by :func:`run`: ``main()`` in a thread (its own event
loop), with ``QODER_BASE_URL`` and ``QODER_PAT`` pointing at the ``server``
fixture. What only a real process shows (Ctrl-C, signals, exit status, a closed
pipe, a terminal) runs as ``python -m qoder_async ...`` (:class:`Cli`).
Timeouts only guard against hangs; nothing here measures time.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import httpx
import pytest
from conftest import eventually

from qoder_async import QoderClient
from qoder_async._cli import PROG, _connect_host, _is_loopback, main
from qoder_async.testing import CannedResponse, FakeQoderServer, TurnContext

TIMEOUT = 30.0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any Qoder settings (no test may reach the real API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def server_env(server: FakeQoderServer) -> dict[str, str]:
    return clean_env({"QODER_BASE_URL": server.base_url, "QODER_PAT": server.token})


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Cli:
    """A running ``python -m qoder_async`` process whose output can be read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: dict[str, list[str]] = {"out": [], "err": []}

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str]) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qoder_async",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
        return cls(proc)

    async def wait_line(self, predicate: Callable[[str], bool], *, stream: str = "out") -> str:
        """Read lines of stdout (or stderr) until one matches; fails on EOF or timeout."""
        reader = self.proc.stdout if stream == "out" else self.proc.stderr
        assert reader is not None
        async with asyncio.timeout(TIMEOUT):
            while raw := await reader.readline():
                line = raw.decode().rstrip("\n")
                self.seen[stream].append(line)
                if predicate(line):
                    return line
        raise AssertionError(f"no matching line on std{stream}; saw {self.seen[stream]!r}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def finish(self) -> Result:
        try:
            async with asyncio.timeout(TIMEOUT):
                out, err = await self.proc.communicate()
        except TimeoutError:
            self.proc.kill()
            await self.proc.communicate()
            raise
        assert self.proc.returncode is not None
        before_out = "".join(line + "\n" for line in self.seen["out"])
        before_err = "".join(line + "\n" for line in self.seen["err"])
        return Result(self.proc.returncode, before_out + out.decode(), before_err + err.decode())


def _stream() -> io.TextIOWrapper:
    """A stdout or stderr like a pipe's: text over bytes (``.buffer``), never a terminal."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode()


_IN_PROCESS = threading.Lock()


def _main_in_this_process(args: tuple[str, ...], env: Mapping[str, str]) -> Result:
    """``main(args)`` with ``env`` as the environment and pipes for stdin, stdout and stderr."""
    with _IN_PROCESS:
        saved = dict(os.environ)
        streams = sys.stdin, sys.stdout, sys.stderr
        out, err = _stream(), _stream()
        try:
            os.environ.clear()
            os.environ.update(env)
            sys.stdin, sys.stdout, sys.stderr = io.StringIO(""), out, err
            code = main(list(args))
        finally:
            sys.stdin, sys.stdout, sys.stderr = streams
            os.environ.clear()
            os.environ.update(saved)
        return Result(code, _text(out), _text(err))


async def run(*args: str, env: Mapping[str, str]) -> Result:
    """Run the CLI to completion: ``main()`` in a thread of this process (its own event loop).

    What only a process shows (signals, exit status, a closed pipe, a terminal) is
    tested with :class:`Cli`, a real ``python -m qoder_async``.
    """
    return await asyncio.to_thread(_main_in_this_process, args, env)


def assert_clean_error(result: Result, code: int) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err


def json_error(result: Result) -> dict[str, Any]:
    """The ``{"error": {...}}`` object a ``--json`` run printed as the one line on stderr."""
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    error: dict[str, Any] = json.loads(lines[0])["error"]
    assert {"type", "message", "status_code", "request_id"} <= error.keys()
    return error


async def finished_turn(client: QoderClient, session_id: str, text: str = "hello") -> None:
    await (await client.session(session_id).send(text)).result()


# --------------------------------------------------------------------------- demo and chat


async def test_demo_streams_a_turn_without_a_token() -> None:
    result = await run("demo", "--message", "What is here?", env=clean_env())
    assert result.code == 0, result
    lines = result.lines
    you = next(i for i, line in enumerate(lines) if line.startswith("you: What is here?"))
    tool = lines.index("→ Read(file_path=README.md)")
    assert lines[tool + 1] == "← # demo-project"
    reply = next(i for i, line in enumerate(lines) if line.startswith('You said: "What is here?"'))
    summary = lines[-1]
    assert you < tool < reply < len(lines) - 1
    assert summary.startswith("■ done · stop: end_turn · usage: ")
    assert "input" in summary
    assert "output tokens" in summary


REPLY = "Streaming works: the first words, then the middle, and finally the end."


async def paced(ctx: TurnContext) -> None:
    await ctx.thinking("Reading first.")
    await ctx.tool("Read", {"file_path": "app.py"}, "def main():\n    pass\n")
    await ctx.message(REPLY, chunks=8, delay=0.02)
    ctx.emit(
        "span.model_request_end",
        is_error=False,
        model_usage={"input_tokens": 42, "output_tokens": 7},
    )


async def test_chat_streams_tools_then_the_reply_then_the_stop_reason(
    server: FakeQoderServer, session_id: str
) -> None:
    server.script = paced
    result = await run("chat", session_id, "Analyze", "this", env=server_env(server))
    assert result.code == 0, result
    assert result.lines[:3] == [
        "· Reading first.",
        "→ Read(file_path=app.py)",
        "← def main():",
    ]
    assert result.lines[3] == REPLY
    assert result.lines[4].startswith("■ done · stop: end_turn · usage: 42 input / 7 output tokens")
    assert len(result.lines) == 5
    assert server.user_messages(session_id)[0]["content"][0]["text"] == "Analyze this"


async def test_chat_json_prints_one_event_per_line_then_the_result(
    server: FakeQoderServer, session_id: str
) -> None:
    server.dialect.turn_ids = True  # the result names the turn id the events carry
    result = await run("chat", session_id, "hi", "--json", env=server_env(server))
    assert result.code == 0, result
    *events, last = [json.loads(line) for line in result.lines]
    assert list(last) == ["result"]
    summary = last["result"]
    reply = next(e for e in events if e["type"] == "agent.message")["content"][0]["text"]
    assert summary["text"] == reply
    assert summary["text"].startswith('You said: "hi"')
    assert summary["turn_id"] == events[0]["turn_id"]
    assert summary["stop_reason"] == "end_turn"
    assert summary["interrupted"] is False
    usage = summary["usage"]
    assert set(usage) == {
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "credits",
    }
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    types = [e["type"] for e in events]
    assert types[0] == "user.message"
    assert types[-1] == "session.status_idle"
    assert "agent.message" in types
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    stored = [e["id"] for e in server.stored_events(session_id)]
    assert ids == stored


async def test_chat_busy_session_fails_or_interrupts(
    server: FakeQoderServer, session_id: str
) -> None:
    async def slow(ctx: TurnContext) -> None:
        await ctx.sleep(30)

    server.script = slow
    env = server_env(server)
    first = await Cli.start("chat", session_id, "first", env=env)
    await server.wait_for_event(session_id, "session.status_running")

    busy = await run("chat", session_id, "second", env=env)
    assert_clean_error(busy, 1)
    assert "409" in busy.err
    assert "--on-busy wait" in busy.err
    assert "--on-busy interrupt" in busy.err

    busy_json = await run("chat", session_id, "second", "--json", env=env)
    assert busy_json.code == 1, busy_json
    error = json_error(busy_json)
    assert error["type"] == "SessionBusyError"
    assert error["status_code"] == 409
    assert "--on-busy wait" in error["hint"]

    async def quick(ctx: TurnContext) -> None:
        await ctx.message(f"done: {ctx.text}")

    server.script = quick
    third = await run("chat", session_id, "third", "--on-busy", "interrupt", env=env)
    assert third.code == 0, third
    assert "done: third" in third.out
    first_result = await first.finish()
    assert first_result.code == 0, first_result
    # Interrupted by the other chat, not by a Ctrl-C of its own: still interrupted.
    assert first_result.lines[-1].startswith("■ interrupted · stop: end_turn"), first_result
    types = [e["type"] for e in server.stored_events(session_id)]
    assert "user.interrupt" in types


async def test_chat_on_busy_wait_sends_once_the_running_turn_ends(
    server: FakeQoderServer, session_id: str
) -> None:
    gate = asyncio.Event()

    async def gated(ctx: TurnContext) -> None:
        if ctx.text == "first":
            await gate.wait()
        await ctx.message(f"done: {ctx.text}")

    server.script = gated
    env = server_env(server)
    first = await Cli.start("chat", session_id, "first", env=env)
    await server.wait_for_event(session_id, "session.status_running")
    second = await Cli.start("-v", "chat", session_id, "second", "--on-busy", "wait", env=env)
    await second.wait_line(lambda line: "409" in line, stream="err")  # it was told "busy"
    gate.set()
    first_result, second_result = await first.finish(), await second.finish()
    assert first_result.code == 0, first_result
    assert first_result.lines[-1].startswith("■ done")
    assert second_result.code == 0, second_result
    assert "done: second" in second_result.out
    types = [e["type"] for e in server.stored_events(session_id)]
    assert "user.interrupt" not in types
    assert [m["content"][0]["text"] for m in server.user_messages(session_id)] == [
        "first",
        "second",
    ]


async def forever(ctx: TurnContext) -> None:
    await ctx.message("Working on it...")
    await ctx.sleep(60)


async def test_first_ctrl_c_interrupts_the_turn_keeps_streaming_and_exits_130(
    server: FakeQoderServer, session_id: str
) -> None:
    server.script = forever
    cli = await Cli.start("chat", session_id, "long job", env=server_env(server))
    await server.wait_for_event(session_id, "agent.message")  # the reply is mid-line now
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 130, result
    assert "interrupting" in result.err
    assert result.lines[-1].startswith("■ interrupted · stop: end_turn")
    assert "user.interrupt" in [e["type"] for e in server.stored_events(session_id)]


async def partial_reply(ctx: TurnContext) -> None:
    """A reply cut short: incremental text that no final agent.message completes."""
    meta = {"message_id": "msg_partial", "parent_tool_use_id": None}
    ctx.emit("agent.message_start", **meta, message={"id": "msg_partial", "content": []})
    ctx.emit("agent.content_block_start", **meta, index=0, content_block={"type": "text"})
    for piece in ("The first half ", "of an answer"):
        delta = {"type": "text_delta", "text": piece}
        ctx.emit("agent.content_block_delta", **meta, index=0, delta=delta)
    await ctx.sleep(60)


async def test_chat_json_interrupted_turn_reports_the_partial_text(server: FakeQoderServer) -> None:
    server.script = partial_reply
    session_id = server.add_session(incremental_streaming_enabled=True)["id"]
    cli = await Cli.start("chat", session_id, "long job", "--json", env=server_env(server))
    await cli.wait_line(lambda line: "of an answer" in line)  # the CLI has the text
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 130, result
    assert "interrupting" in result.err
    *events, last = [json.loads(line) for line in result.lines]
    assert "user.interrupt" in [e.get("type") for e in events]
    assert last["result"]["interrupted"] is True
    assert last["result"]["text"] == "The first half of an answer"
    assert last["result"]["stop_reason"] == "end_turn"


async def test_the_ctrl_c_note_is_a_line_of_its_own_in_a_shared_terminal(
    server: FakeQoderServer, session_id: str
) -> None:
    """stdout and stderr to one place (a terminal, ``2>&1``): the note never splits the reply."""
    server.script = forever
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qoder_async",
        "chat",
        session_id,
        "long job",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=server_env(server),
    )
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(TIMEOUT):
        while b"Working on it..." not in seen:  # printed, with no newline after it yet
            chunk = await proc.stdout.read(4096)
            assert chunk, seen
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest, _ = await proc.communicate()
    lines = (seen + rest).decode().splitlines()
    assert proc.returncode == 130, lines
    assert "Working on it..." in lines
    assert f"{PROG}: interrupting the turn... (press Ctrl-C again to quit)" in lines
    assert lines[-1].startswith("■ interrupted · stop: end_turn"), lines


async def test_second_ctrl_c_quits_with_130(server: FakeQoderServer, session_id: str) -> None:
    server.script = forever
    cli = await Cli.start("chat", session_id, "long job", env=server_env(server))
    await server.wait_for_event(session_id, "agent.message")  # the reply is mid-line now
    # The interrupt is accepted but never reaches the agent: the turn keeps running.
    accepted = {"data": [{"id": "evt_canned", "type": "user.interrupt", "session_id": session_id}]}
    server.faults.respond_next.append(
        CannedResponse(
            "POST",
            r"/events$",
            202,
            {"Content-Type": "application/json"},
            json.dumps(accepted).encode(),
        )
    )
    cli.signal(signal.SIGINT)
    await cli.wait_line(lambda line: "interrupting" in line, stream="err")
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 130, result
    assert "Traceback" not in result.err


# --------------------------------------------------------------------------- tail and events


async def test_tail_follows_until_ctrl_c(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    cli = await Cli.start("tail", session_id, env=server_env(server))
    await finished_turn(client, session_id, "follow me")
    first = await cli.wait_line(lambda line: "user.message" in line)
    assert "follow me" in first
    await cli.wait_line(lambda line: "→ Read(" in line)
    last = await cli.wait_line(lambda line: " idle " in line)
    assert last.endswith("end_turn")
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 130, result
    last_id = server.stored_events(session_id)[-1]["id"]
    assert f"--from {last_id}" in result.err


async def test_tail_ends_when_the_session_is_deleted(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    await finished_turn(client, session_id)
    cli = await Cli.start("tail", session_id, env=server_env(server))
    await cli.wait_line(lambda line: " idle " in line)
    await client.sessions.delete(session_id)
    result = await cli.finish()
    assert result.code == 0, result
    assert " deleted" in result.lines[-1]


async def test_tail_from_an_event_with_deltas_as_json(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    await finished_turn(client, session_id, "old turn")
    cursor = server.stored_events(session_id)[-1]["id"]
    connections = server.stream_connections
    cli = await Cli.start(
        "tail", session_id, "--from", cursor, "--deltas", "--json", env=server_env(server)
    )
    # previews are live only: wait for the connection
    await eventually(
        lambda: server.stream_connections > connections, "tail's stream open", timeout=TIMEOUT
    )
    await finished_turn(client, session_id, "new turn")
    await cli.wait_line(lambda line: json.loads(line)["type"] == "session.status_idle")
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 130, result
    events = [json.loads(line) for line in result.lines]
    assert events[0]["type"] == "user.message"
    assert "new turn" in json.dumps(events[0])
    assert "old turn" not in result.out
    assert {"event_start", "event_delta"} <= {e["type"] for e in events}


async def test_events_lists_history(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    await finished_turn(client, session_id)
    env = server_env(server)
    stored = server.stored_events(session_id)

    everything = await run("events", session_id, env=env)
    assert everything.code == 0, everything
    assert [line.split()[0] for line in everything.lines] == [e["id"] for e in stored]

    newest = await run("events", session_id, "--order", "desc", "--limit", "2", env=env)
    assert [line.split()[0] for line in newest.lines] == [stored[-1]["id"], stored[-2]["id"]]
    assert newest.lines[0].split()[2] == "idle"


@pytest.mark.parametrize(
    "args",
    [
        ["--type", "agent.message", "--type", "agent.tool_use", "SESSION"],  # before the id
        ["SESSION", "--type", "agent.message", "--type", "agent.tool_use"],
        ["--type", "agent.message,agent.tool_use", "SESSION"],
        ["--type", "agent.message, agent.tool_use", "--json", "SESSION"],
    ],
)
async def test_events_type_is_repeatable_and_never_swallows_the_id(
    server: FakeQoderServer, client: QoderClient, session_id: str, args: list[str]
) -> None:
    await finished_turn(client, session_id)
    argv = [session_id if arg == "SESSION" else arg for arg in args]
    only = await run("--json", "events", *argv, env=server_env(server))
    assert only.code == 0, only
    assert sorted(json.loads(line)["type"] for line in only.lines) == [
        "agent.message",
        "agent.tool_use",
    ]


# --------------------------------------------------------------------------- resources


async def test_sessions_commands(server: FakeQoderServer) -> None:
    env = server_env(server)
    agent = server.add_agent("helper")
    environment = server.add_environment("box")
    existing = server.add_session(title="existing")

    listed = await run("sessions", "list", env=env)
    assert listed.code == 0, listed
    assert listed.lines[0].startswith(existing["id"])
    assert "existing" in listed.lines[0]

    created = await run(
        "sessions",
        "create",
        "--agent",
        agent["id"],
        "--environment",
        environment["id"],
        "--title",
        "from the cli",
        "--json",
        env=env,
    )
    assert created.code == 0, created
    session = json.loads(created.out)
    assert session["title"] == "from the cli"
    assert server.session(session["id"])["title"] == "from the cli"

    got = await run("sessions", "get", session["id"], env=env)
    assert got.code == 0, got
    assert f"id:          {session['id']}" in got.lines
    assert "title:       from the cli" in got.lines

    cancelled = await run("sessions", "cancel", session["id"], env=env)
    assert cancelled.code == 0, cancelled
    assert cancelled.lines[0] == f"id:          {session['id']}"
    assert cancelled.lines[1].startswith("status:")

    archived = await run("--json", "sessions", "archive", session["id"], env=env)
    assert archived.code == 0, archived
    assert json.loads(archived.out)["archived_at"]
    assert server.session(session["id"])["archived_at"]

    as_json = await run("sessions", "list", "--json", "--limit", "1", env=env)
    assert len(as_json.lines) == 1
    assert json.loads(as_json.lines[0])["id"] == existing["id"]


async def test_sessions_delete(server: FakeQoderServer) -> None:
    env = server_env(server)
    first, second = server.add_session()["id"], server.add_session()["id"]

    deleted = await run("sessions", "delete", first, env=env)
    assert deleted.code == 0, deleted
    assert deleted.lines == [f"deleted {first}"]
    gone = await run("sessions", "get", first, env=env)
    assert_clean_error(gone, 1)
    assert "404" in gone.err

    as_json = await run("--json", "sessions", "delete", second, env=env)
    assert as_json.code == 0, as_json
    assert json.loads(as_json.out) == {"id": second, "type": "session_deleted"}
    missing = await run("sessions", "delete", "sess_missing", env=env)
    assert_clean_error(missing, 1)


async def test_agents_get_and_archive(server: FakeQoderServer, client: QoderClient) -> None:
    env = server_env(server)
    agent = server.add_agent("helper", system="Be brief.")
    await client.agents.update(agent["id"], system="Be briefer.")

    got = await run("agents", "get", agent["id"], env=env)
    assert got.code == 0, got
    assert f"id:          {agent['id']}" in got.lines
    assert "name:        helper" in got.lines
    assert "version:     2" in got.lines
    assert "system:      Be briefer." in got.lines
    older = await run("--json", "agents", "get", agent["id"], "--version", "1", env=env)
    assert older.code == 0, older
    assert json.loads(older.out)["system"] == "Be brief."

    archived = await run("agents", "archive", agent["id"], env=env)
    assert archived.code == 0, archived
    assert any(line.startswith("archived_at: ") for line in archived.lines), archived.lines
    as_json = await run("--json", "agents", "get", agent["id"], env=env)
    assert json.loads(as_json.out)["archived_at"]

    missing = await run("agents", "get", "agent_missing", env=env)
    assert_clean_error(missing, 1)


async def test_environments_get_and_archive(server: FakeQoderServer) -> None:
    env = server_env(server)
    environment = server.add_environment("sandbox")

    got = await run("environments", "get", environment["id"], env=env)
    assert got.code == 0, got
    assert f"id:          {environment['id']}" in got.lines
    assert "name:        sandbox" in got.lines
    assert not any(line.startswith("archived_at:") for line in got.lines)

    archived = await run("--json", "environments", "archive", environment["id"], env=env)
    assert archived.code == 0, archived
    assert json.loads(archived.out)["archived_at"]
    shown = await run("environments", "get", environment["id"], env=env)
    assert any(line.startswith("archived_at: ") for line in shown.lines), shown.lines

    missing = await run("environments", "archive", "env_missing", env=env)
    assert_clean_error(missing, 1)


async def test_agents_commands(server: FakeQoderServer) -> None:
    env = server_env(server)
    created = await run(
        "agents",
        "create",
        "--name",
        "reviewer",
        "--model",
        "auto",
        "--system",
        "Be brief.",
        env=env,
    )
    assert created.code == 0, created
    assert "name:        reviewer" in created.lines
    assert "system:      Be brief." in created.lines
    listed = await run("agents", "list", env=env)
    assert listed.code == 0, listed
    assert any("reviewer" in line and "model=auto" in line for line in listed.lines)
    as_json = await run("--json", "agents", "list", env=env)
    assert [json.loads(line)["name"] for line in as_json.lines] == ["reviewer"]


async def test_environments_commands(server: FakeQoderServer) -> None:
    env = server_env(server)
    created = await run("environments", "create", "--name", "sandbox", "--json", env=env)
    assert created.code == 0, created
    environment = json.loads(created.out)
    assert environment["name"] == "sandbox"
    listed = await run("environments", "list", env=env)
    assert listed.code == 0, listed
    assert listed.lines[0].startswith(environment["id"])
    assert "sandbox" in listed.lines[0]


async def test_deployments_list_and_run(server: FakeQoderServer) -> None:
    env = server_env(server)
    agent_id, env_id = server.add_agent()["id"], server.add_environment()["id"]
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        dep = await client.deployments.create(
            name="nightly",
            agent=agent_id,
            environment_id=env_id,
            initial_events=[{"type": "user.message", "content": "status report"}],
            schedule={"type": "cron", "expression": "0 9 * * *", "timezone": "UTC"},
        )
        other = await client.deployments.create(
            name="broken",
            agent=agent_id,
            environment_id=server.add_environment()["id"],
            initial_events=[{"type": "user.message", "content": "x"}],
        )
        await client.environments.archive(other.environment_id or "")
        await client.deployments.pause(other.id)

    listed = await run("deployments", "list", env=env)
    assert listed.code == 0, listed
    assert [line.split()[:3] for line in listed.lines] == [
        [other.id, "broken", "paused"],
        [dep.id, "nightly", "active"],
    ]
    assert "schedule=0 9 * * *" in listed.lines[1]
    paused = await run("--json", "deployments", "list", "--status", "paused", env=env)
    assert [json.loads(line)["id"] for line in paused.lines] == [other.id]

    started = await run("deployments", "run", dep.id, env=env)
    assert started.code == 0, started
    [session_line] = [line for line in started.lines if line.startswith("session:")]
    session_id = session_line.split()[1]
    await server.wait_idle(session_id)

    followed = await run("--json", "deployments", "run", dep.id, "--follow", env=env)
    assert followed.code == 0, followed
    records = [json.loads(line) for line in followed.lines]
    assert records[0]["type"] == "deployment_run"
    assert 'You said: "status report"' in records[-1]["result"]["text"]

    failed = await run("deployments", "run", other.id, "--follow", env=env)
    assert failed.code == 1, failed
    assert any(line.startswith("error:") for line in failed.lines), failed.lines

    missing = await run("deployments", "run", "dep_missing", env=env)
    assert_clean_error(missing, 1)


# --------------------------------------------------------------------------- fake-server


async def read_fake_server(cli: Cli) -> tuple[dict[str, str], dict[str, str]]:
    """The ``key=value`` lines ``fake-server`` prints, and its ``export`` lines as variables.

    The ``export QODER_BASE_URL=...`` line is printed last.
    """
    values: dict[str, str] = {}
    exports: dict[str, str] = {}
    while "QODER_BASE_URL" not in exports:
        line = await cli.wait_line(lambda line: True)
        if line.startswith("export "):
            exports.update(item.split("=", 1) for item in line.split()[1:])
        else:
            key, _, value = line.partition("=")
            values[key] = value
    return values, exports


async def test_fake_server_serves_until_ctrl_c() -> None:
    cli = await Cli.start("fake-server", "--port", "0", "--heartbeat", "1", env=clean_env())
    values, exports = await read_fake_server(cli)
    base_url, token, session_id = values["base_url"], values["token"], values["session_id"]
    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/api/v1/cloud")
    assert exports == {"QODER_BASE_URL": base_url, "QODER_PAT": token}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        answer = await http.get(f"{base_url}/sessions/{session_id}")
        assert answer.status_code == 200
        assert answer.json()["id"] == session_id
    chat = await run(
        "chat", session_id, "hi", env=clean_env({"QODER_BASE_URL": base_url, "QODER_PAT": token})
    )
    assert chat.code == 0, chat
    assert 'You said: "hi"' in chat.out
    assert "streamed to you as it was written" not in chat.out  # the instant script, not demo
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 0, result


async def test_fake_server_tools_script_calls_a_custom_tool() -> None:
    cli = await Cli.start("fake-server", "--script", "tools", env=clean_env())
    values, exports = await read_fake_server(cli)
    await cli.wait_line(lambda line: "get_weather" in line, stream="err")
    calls: list[Mapping[str, Any]] = []

    async def get_weather(tool_input: Mapping[str, Any]) -> str:
        calls.append(tool_input)
        return "18°C and sunny"

    async with QoderClient(token=exports["QODER_PAT"], base_url=exports["QODER_BASE_URL"]) as c:
        session = c.session(values["session_id"])
        turn = await session.send("Weather?", tools={"get_weather": get_weather})
        result = await turn.result()
    assert calls == [{"city": "Paris"}]
    assert result.text == "get_weather returned: 18°C and sunny"

    # chat runs no custom tools: it says the turn waits, and Ctrl-C interrupts it.
    chat = await Cli.start("chat", values["session_id"], "Weather?", env=clean_env(exports))
    await chat.wait_line(lambda line: line.startswith("⏸ the agent waits"))
    assert "→ get_weather(city=Paris)" in chat.seen["out"]
    chat.signal(signal.SIGINT)
    chatted = await chat.finish()
    assert chatted.code == 130, chatted
    assert chatted.lines[-1].startswith("■ interrupted")

    cli.signal(signal.SIGINT)
    assert (await cli.finish()).code == 0


def local_address(family: socket.AddressFamily, probe: str) -> str | None:
    """This machine's own address that is not loopback, if any (a UDP connect sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "dialled"),
    [("0.0.0.0", "http://127.0.0.1:"), ("::", "http://[::1]:")],
)
async def test_fake_server_on_a_wildcard_address_prints_lines_that_work(
    host: str, dialled: str
) -> None:
    if not can_bind(host) or not can_bind(_connect_host(host)):
        pytest.skip(f"cannot listen on {host} here")
    cli = await Cli.start("fake-server", "--host", host, env=clean_env())
    values, exports = await read_fake_server(cli)
    assert values["base_url"].startswith(dialled)
    assert exports == {"QODER_BASE_URL": values["base_url"], "QODER_PAT": values["token"]}
    chat = await run("chat", values["session_id"], "hi", env=clean_env(exports))
    assert chat.code == 0, chat
    assert 'You said: "hi"' in chat.out
    cli.signal(signal.SIGINT)
    result = await cli.finish()
    assert result.code == 0, result
    assert "QODER_ALLOW_INSECURE_HTTP" not in result.out


async def test_fake_server_on_a_remote_address_exports_the_insecure_switch() -> None:
    address = local_address(socket.AF_INET, "192.0.2.1")  # TEST-NET-1: never reached
    if address is None or not can_bind(address):
        pytest.skip("this machine has no IPv4 address besides loopback")
    cli = await Cli.start("fake-server", "--host", address, env=clean_env())
    values, exports = await read_fake_server(cli)
    assert values["base_url"].startswith(f"http://{address}:")
    assert exports == {
        "QODER_ALLOW_INSECURE_HTTP": "1",
        "QODER_BASE_URL": values["base_url"],
        "QODER_PAT": values["token"],
    }
    chat = await run("chat", values["session_id"], "hi", env=clean_env(exports))
    assert chat.code == 0, chat
    assert 'You said: "hi"' in chat.out
    del exports["QODER_ALLOW_INSECURE_HTTP"]
    refused = await run("sessions", "list", env=clean_env(exports))
    assert_clean_error(refused, 2)
    cli.signal(signal.SIGINT)
    assert (await cli.finish()).code == 0


def test_which_host_fake_server_prints() -> None:
    assert _connect_host("0.0.0.0") == "127.0.0.1"
    assert _connect_host("") == "127.0.0.1"
    assert _connect_host("::") == "::1"
    assert _connect_host("10.1.2.3") == "10.1.2.3"
    assert _connect_host("localhost") == "localhost"
    assert _is_loopback("127.0.0.1")
    assert _is_loopback("::1")
    assert _is_loopback("localhost")
    assert not _is_loopback("10.1.2.3")
    assert not _is_loopback("fake.example")


# --------------------------------------------------------------------------- errors and options


def insecure_env(server: FakeQoderServer, **extra: str) -> dict[str, str]:
    """The server reached through 0.0.0.0: plain http:// to a host that is not loopback."""
    remote = server.base_url.replace("127.0.0.1", "0.0.0.0")
    return clean_env({"QODER_BASE_URL": remote, "QODER_PAT": server.token, **extra})


async def test_plain_http_to_a_remote_host_is_refused_by_default(server: FakeQoderServer) -> None:
    server.add_environment("far")
    refused = await run("environments", "list", env=insecure_env(server))
    assert_clean_error(refused, 2)
    assert "http://" in refused.err
    assert "--allow-insecure-http" in refused.err
    assert "QODER_ALLOW_INSECURE_HTTP=1" in refused.err
    off = await run("environments", "list", env=insecure_env(server, QODER_ALLOW_INSECURE_HTTP="0"))
    assert_clean_error(off, 2)


@pytest.mark.parametrize(
    ("flag", "extra"),
    [
        (["--allow-insecure-http"], {}),
        ([], {"QODER_ALLOW_INSECURE_HTTP": "1"}),
        ([], {"QODER_ALLOW_INSECURE_HTTP": "true"}),
    ],
)
async def test_allow_insecure_http_by_flag_or_environment(
    server: FakeQoderServer, flag: list[str], extra: dict[str, str]
) -> None:
    server.add_environment("far")
    result = await run("environments", "list", *flag, env=insecure_env(server, **extra))
    assert result.code == 0, result
    assert "far" in result.out


async def test_api_error_is_one_line_with_the_request_id(server: FakeQoderServer) -> None:
    result = await run("sessions", "get", "sess_missing", env=server_env(server))
    assert_clean_error(result, 1)
    assert "not_found" in result.err
    assert "request_id=req_" in result.err
    assert server.token not in result.err
    assert result.out == ""


async def test_json_mode_errors_are_one_json_object_on_stderr(server: FakeQoderServer) -> None:
    missing = await run("--json", "sessions", "get", "sess_missing", env=server_env(server))
    assert missing.code == 1, missing
    assert missing.out == ""
    error = json_error(missing)
    assert error["type"] == "NotFoundError"
    assert error["status_code"] == 404
    assert error["request_id"].startswith("req_")
    assert error["error_type"]
    assert error["message"]
    assert server.token not in missing.err

    wrong = await run(
        "sessions",
        "list",
        "--json",
        "--token",
        "pt-wrong-secret",
        env=clean_env({"QODER_BASE_URL": server.base_url}),
    )
    assert json_error(wrong)["type"] == "AuthenticationError"
    assert "pt-wrong-secret" not in wrong.err

    no_token = await run("sessions", "list", "--json", env=clean_env())
    assert no_token.code == 2, no_token
    error = json_error(no_token)
    assert error["type"] == "ConfigurationError"
    assert error["status_code"] is None
    assert "QODER_PAT" in error["message"]

    usage = await run("--json", "chat", env=clean_env())
    assert usage.code == 2, usage
    error = json_error(usage)
    assert error["type"] == "UsageError"
    assert "required" in error["message"]


async def test_wrong_token_is_an_api_error(server: FakeQoderServer) -> None:
    result = await run("--token", "pt-wrong-secret", "sessions", "list", env=server_env(server))
    assert_clean_error(result, 1)
    assert "401" in result.err
    assert "pt-wrong-secret" not in result.err


async def test_missing_token_is_a_configuration_error() -> None:
    result = await run("sessions", "list", env=clean_env())
    assert_clean_error(result, 2)
    assert "--token" in result.err
    assert "QODER_PAT" in result.err


async def test_usage_errors_exit_2() -> None:
    result = await run("chat", env=clean_env())
    assert result.code == 2
    assert "usage:" in result.err
    assert "Traceback" not in result.err


async def test_verbose_logs_requests_but_never_the_token(server: FakeQoderServer) -> None:
    result = await run("-v", "environments", "list", env=server_env(server))
    assert result.code == 0, result
    assert "GET /environments -> 200" in result.err
    assert server.token not in result.err


COMMANDS = [
    [],
    ["demo"],
    ["chat"],
    ["tail"],
    ["events"],
    ["sessions"],
    ["sessions", "list"],
    ["sessions", "create"],
    ["sessions", "get"],
    ["sessions", "cancel"],
    ["sessions", "archive"],
    ["sessions", "delete"],
    ["agents"],
    ["agents", "list"],
    ["agents", "create"],
    ["agents", "get"],
    ["agents", "archive"],
    ["environments"],
    ["environments", "list"],
    ["environments", "create"],
    ["environments", "get"],
    ["environments", "archive"],
    ["deployments"],
    ["deployments", "list"],
    ["deployments", "run"],
    ["files"],
    ["files", "upload"],
    ["files", "download"],
    ["fake-server"],
]


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: one interpreter start per command would cost more than the rest of the file.
    for cmd in COMMANDS:
        assert main([*cmd, "--help"]) == 0, cmd
        out = capsys.readouterr().out
        assert "Example:" in out, cmd
        assert "--json" in out, cmd
        assert "--base-url" in out, cmd


def test_fake_server_help_documents_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-server", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{default,demo,tools}" in text
    assert "get_weather" in text
    assert "Default: default" in text


async def test_help_as_a_subprocess() -> None:
    result = await run("chat", "--help", env=clean_env())
    assert result.code == 0, result
    assert "Example:" in result.out
    assert "--on-busy" in result.out
    assert "JSON Lines (one JSON object per line)" in " ".join(result.out.split())


@pytest.mark.parametrize("where", ["before", "after"])
async def test_global_options_go_before_or_after_the_command(
    server: FakeQoderServer, where: str
) -> None:
    server.add_environment("placed")
    options = ["--base-url", server.base_url, "--token", server.token, "--json"]
    command = ["environments", "list"]
    args = options + command if where == "before" else command + options
    result = await run(*args, env=clean_env())
    assert result.code == 0, result
    assert json.loads(result.out)["name"] == "placed"


# --------------------------------------------------------------------------- retries, pipes


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A base URL on a loopback port nobody listens on.

    The port stays bound (not listening) for the whole test: a freed port may be
    taken by any server on the machine before the CLI connects.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}/api/v1/cloud"


def test_the_cli_retries_for_10_seconds_by_default() -> None:
    from qoder_async._cli import build_parser

    assert build_parser().parse_args(["environments", "list"]).retry_timeout == 10.0
    args = build_parser().parse_args(["environments", "list", "--retry-timeout", "2.5"])
    assert args.retry_timeout == 2.5


async def test_each_retry_is_a_line_on_stderr_then_the_error_exits_1(refused_url: str) -> None:
    env = clean_env({"QODER_BASE_URL": refused_url, "QODER_PAT": "pat_secret_0123456789"})
    result = await run("--retry-timeout", "1", "environments", "get", "env_1", env=env)
    assert result.code == 1, result
    *retries, error = result.err.strip().splitlines()
    assert retries, result.err
    for number, line in enumerate(retries, start=1):
        assert line.startswith(
            f"{PROG}: warning: GET /environments/env_1 failed (attempt {number})"
        )
        assert "retrying in" in line
        assert "of the retry deadline left" in line
    assert error.startswith(f"{PROG}: error: Connection refused")
    assert "pat_secret_0123456789" not in result.err
    assert "Traceback" not in result.err


async def test_json_mode_retries_are_log_objects_before_the_error(refused_url: str) -> None:
    env = clean_env({"QODER_BASE_URL": refused_url, "QODER_PAT": "pat_secret_0123456789"})
    result = await run("--json", "--retry-timeout", "1", "sessions", "get", "s1", env=env)
    assert result.code == 1, result
    *logs, error = [json.loads(line) for line in result.err.strip().splitlines()]
    assert logs
    assert all(entry["log"]["level"] == "warning" for entry in logs), logs
    assert error["error"]["type"] == "APIConnectionError"


async def test_a_closed_pipe_exits_141_quietly(server: FakeQoderServer, tmp_path: Any) -> None:
    """``qoder-async files download F -o - | head -c 10``: 141 like ``cat``, no traceback."""
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        meta = await client.files.upload(("big.bin", os.urandom(1 << 20)))

    def run_and_hang_up() -> tuple[int, bytes]:
        with subprocess.Popen(
            [sys.executable, "-m", "qoder_async", "files", "download", meta.id, "-o", "-"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server_env(server),
            cwd=tmp_path,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            assert len(proc.stdout.read(10)) == 10
            proc.stdout.close()  # the reader hangs up, as `head` does
            err = proc.stderr.read()
            return proc.wait(timeout=TIMEOUT), err

    code, err = await asyncio.wait_for(asyncio.to_thread(run_and_hang_up), TIMEOUT)
    assert code == 141, err
    assert err == b"", err


# --------------------------------------------------------------------------- files


async def test_files_upload_then_download(server: FakeQoderServer, tmp_path: Any) -> None:
    data = os.urandom(300_000)
    (tmp_path / "report.bin").write_bytes(data)
    env = server_env(server)
    up = await run("--json", "files", "upload", str(tmp_path / "report.bin"), env=env)
    assert up.code == 0, up
    assert up.err == ""  # no progress when stderr is not a terminal
    meta = json.loads(up.out)
    assert meta["filename"] == "report.bin"
    assert meta["size_bytes"] == len(data)

    target = tmp_path / "copy.bin"
    down = await run("files", "download", meta["id"], "-o", str(target), env=env)
    assert down.code == 0, down
    assert down.err == ""
    assert target.read_bytes() == data
    assert down.out.startswith(f"saved {target}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    raw = await Cli.start("files", "download", meta["id"], "-o", "-", env=env)
    out, _ = await raw.proc.communicate()
    assert out == data


async def test_files_download_never_replaces_a_file_by_the_servers_name(
    server: FakeQoderServer, tmp_path: Any
) -> None:
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        meta = await client.files.upload(("notes.txt", b"from the server"))
    (tmp_path / "notes.txt").write_bytes(b"mine")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qoder_async",
        "files",
        "download",
        meta.id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(server),
        cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2, err
    assert b"notes.txt exists" in err
    assert (tmp_path / "notes.txt").read_bytes() == b"mine"


async def test_files_upload_of_a_missing_file_is_a_usage_error(server: FakeQoderServer) -> None:
    result = await run("files", "upload", "/nonexistent/file.bin", env=server_env(server))
    assert_clean_error(result, 2)
    assert "cannot read /nonexistent/file.bin" in result.err


def run_with_stderr_on_a_terminal(args: list[str], env: Mapping[str, str]) -> tuple[int, bytes]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe); (exit code, terminal bytes)."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qoder_async", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            env=dict(env),
        )
    finally:
        os.close(secondary)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(primary)
    return proc.wait(timeout=TIMEOUT), seen


async def test_files_progress_is_drawn_on_a_terminal_only(
    server: FakeQoderServer, tmp_path: Any
) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(1 << 20))
    env = server_env(server)
    args = ["files", "upload", str(tmp_path / "big.bin")]
    code, terminal = await asyncio.wait_for(
        asyncio.to_thread(run_with_stderr_on_a_terminal, args, env), TIMEOUT
    )
    assert code == 0, terminal
    text = terminal.decode()
    assert "\r\x1b[Kuploading big.bin " in text
    assert "1.0 MiB / 1.0 MiB (100%)" in text
    assert "/s" in text
    assert text.endswith("\r\n")  # the finished bar stays, on its own line

    code, terminal = await asyncio.wait_for(
        asyncio.to_thread(run_with_stderr_on_a_terminal, ["--json", *args], env), TIMEOUT
    )
    assert code == 0, terminal
    assert terminal == b""  # --json: nothing but what was asked for


def test_progress_line_says_bytes_rate_and_eta() -> None:
    from qoder_async._cli import progress_line

    mib = 1 << 20
    assert progress_line(mib, 4 * mib, 2.0) == "1.0 MiB / 4.0 MiB (25%) · 512.0 KiB/s · ETA 6s"
    assert progress_line(0, 4 * mib, 0.0) == "0 B / 4.0 MiB (0%) · 0 B/s"
    assert progress_line(4 * mib, 4 * mib, 1.0) == "4.0 MiB / 4.0 MiB (100%) · 4.0 MiB/s"
    assert progress_line(300, None, 1.0) == "300 B · 300 B/s"  # size unknown: no ETA
    assert progress_line(mib, 100 * mib, 1.0).endswith("ETA 1m39s")
