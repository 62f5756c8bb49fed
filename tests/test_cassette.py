"""Cassettes: ``record(client, path)`` writes a session's traffic, ``FakeQoderServer(cassette=)``
answers from it (with ``faults=`` on top), the pytest marker and the CLI use both.

Everything runs against fake servers on 127.0.0.1; timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import FAST, eventually, run_loop_elsewhere
from test_cli import clean_env, run, server_env

from qoder_async import (
    APIStatusError,
    ConfigurationError,
    QoderClient,
    RetryPolicy,
    TurnResult,
)
from qoder_async.testing import CannedResponse, FakeQoderServer, Faults, TurnContext, record
from qoder_async.testing._cassette import Replay, load_cassette
from qoder_async.testing._wire import Ids

TOKEN = "tok-SECRET-4711/+="  # '/', '+' and '=' change when percent-encoded
TIMEOUT = 30.0


async def agent(ctx: TurnContext) -> None:
    """A tool call with a paused turn, or a reply that runs until interrupted."""
    if "weather" in ctx.text:
        use = await ctx.custom_tool("get_weather", {"city": "Paris"})
        [answer] = await ctx.require_action([use["id"]])
        await ctx.message(f"It is {answer['content'][0]['text']} in Paris.", chunks=3)
        for part in range(3):
            await ctx.message(f"detail {part}", chunks=2)
        return
    await ctx.message("Working on it", chunks=2)
    await ctx.sleep(30)


def get_weather(tool_input: dict[str, Any]) -> str:
    """The tool the bot runs."""
    return "sunny" if tool_input["city"] == "Paris" else "cloudy"


async def conversation(client: QoderClient, session_id: str) -> tuple[TurnResult, TurnResult]:
    """A turn with a tool call, then a turn the bot interrupts at its first message."""
    handle = client.session(session_id)
    turn = await handle.send("What is the weather?", tools={"get_weather": get_weather})
    first = await asyncio.wait_for(turn.result(), TIMEOUT)
    turn = await handle.send("Write me a novel")
    async for event in turn:
        if event.type == "agent.message":
            await turn.interrupt()
    second = await asyncio.wait_for(turn.result(), TIMEOUT)
    return first, second


def same(result: TurnResult) -> tuple[Any, ...]:
    """What a replay must reproduce: text, stop reason, tool calls, event ids."""
    calls = [(c.id, c.name, c.input, c.output) for c in result.tool_calls]
    ids = [e.id for e in result.events]
    return (result.text, result.stop_reason, calls, ids, result.interrupted)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def record_conversation(path: Path) -> tuple[str, tuple[TurnResult, TurnResult]]:
    """Record ``conversation`` against a fake that drops every stream after 3 events."""
    async with FakeQoderServer(script=agent, token=TOKEN, heartbeat_interval=0.2) as server:
        server.faults.drop_after_events = 3  # reconnects mid-turn
        session_id = server.add_session()["id"]
        async with (
            QoderClient(token=TOKEN, base_url=server.base_url, reconnect=FAST) as client,
            record(client, path),
        ):
            results = await conversation(client, session_id)
        assert server.fault_counts["drop_after_events"] >= 2
    return session_id, results


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, tuple[Any, ...]]:
    path = tmp_path_factory.mktemp("cassettes") / "conversation.jsonl"
    session_id, results = run_loop_elsewhere(record_conversation(path))
    return path, session_id, tuple(same(r) for r in results)


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize(
    "faults",
    [None, Faults(drop_after_events=2, duplicate_on_resume=3, reorder_on_replay=True)],
    ids=["plain", "drops-and-duplicates"],
)
async def test_a_recorded_conversation_replays_to_the_same_results(
    recorded: tuple[Path, str, tuple[Any, ...]], faults: Faults | None
) -> None:
    path, session_id, expected = recorded
    kinds = [r["type"] for r in lines(path)[1:]]
    assert kinds.count("stream") >= 3  # the recording itself reconnected mid-turn
    first, second = expected
    assert first[2]
    assert first[2][0][1:] == ("get_weather", {"city": "Paris"}, "sunny")
    assert second[4] is True  # interrupted
    async with FakeQoderServer(cassette=path, speed=0, faults=faults) as server:
        async with QoderClient(
            token=server.token, base_url=server.base_url, reconnect=FAST
        ) as client:
            results = await asyncio.wait_for(conversation(client, session_id), TIMEOUT)
        if faults is not None:
            assert server.fault_counts["drop_after_events"] >= 2
            assert server.fault_counts["duplicate_on_resume"] >= 1
    assert tuple(same(r) for r in results) == expected


async def test_replay_holds_frames_back_until_the_write_that_caused_them(
    recorded: tuple[Path, str, tuple[Any, ...]],
) -> None:
    # A frame recorded after a send started is only streamed once that send was
    # answered: a replayed turn never runs ahead of the message that started it.
    path, session_id, _ = recorded
    replay = Replay(load_cassette(path), speed=0, ids=Ids(random.Random(0)))
    stream = f"/sessions/{session_id}/events/stream"
    feeder = asyncio.create_task(replay.feed(stream))
    try:
        for _ in range(50):  # speed 0: an ungated feeder would be done by now
            await asyncio.sleep(0)
        assert replay.state(stream).log == []
        first = next(r for r in lines(path)[1:] if r["type"] == "http" and r["method"] == "POST")
        body = json.dumps(first["request"]["json"]).encode()
        answer = replay.answer("POST", first["path"], body, "application/json", "http://x")
        assert answer.status == 202
        await eventually(lambda: len(replay.state(stream).log) >= 3)
        types = [s.event["type"] for s in replay.state(stream).log]
        # ...up to the tool's pause: the rest waits for the tool result to be posted
        assert "session.status_idle" in types
        assert "user.custom_tool_result" not in types
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def test_unmatched_request_answers_501_naming_it_and_the_closest(
    recorded: tuple[Path, str, tuple[Any, ...]],
) -> None:
    path, session_id, _ = recorded
    async with FakeQoderServer(cassette=path, speed=0) as server:
        async with QoderClient(
            token=server.token, base_url=server.base_url, retry=RetryPolicy(max_retries=0)
        ) as client:
            with pytest.raises(APIStatusError) as caught:
                await client.session(session_id).send("Something never said")
    assert caught.value.status_code == 501
    message = str(caught.value)
    assert "Something never said" in message
    assert f"POST /sessions/{session_id}/events" in message
    assert "closest recorded:" in message
    assert "What is the weather?" in message
    assert len(server.requests) == 1  # x-should-retry: false, never retried


async def test_a_get_asked_more_often_than_recorded_gets_the_last_answer(tmp_path: Path) -> None:
    path = tmp_path / "get.jsonl"
    async with FakeQoderServer() as live:
        session_id = live.add_session(title="first")["id"]
        async with QoderClient(token=live.token, base_url=live.base_url) as client:
            async with record(client, path):
                assert (await client.sessions.retrieve(session_id)).title == "first"
    async with FakeQoderServer(cassette=path, speed=0) as server:
        async with QoderClient(token=server.token, base_url=server.base_url) as client:
            for _ in range(3):
                assert (await client.sessions.retrieve(session_id)).title == "first"
            with pytest.raises(APIStatusError, match="closest recorded: GET /sessions/") as err:
                await client.sessions.retrieve("sess_other")
            assert err.value.status_code == 501


# --------------------------------------------------------------------------- secrets


async def test_no_secret_reaches_the_cassette(tmp_path: Path) -> None:
    path = tmp_path / "secrets.jsonl"
    echo = json.dumps(
        {"type": "error", "error": {"type": "api_error", "message": f"bad token {TOKEN}"}}
    ).encode()
    async with FakeQoderServer(script=agent, token=TOKEN, heartbeat_interval=0.2) as server:
        session_id = server.add_session()["id"]
        file_id = server.add_file(f"the file says {TOKEN}".encode(), "notes.txt")["id"]
        server.faults.respond_next.append(
            CannedResponse(
                "GET",
                r"/agents$",
                400,
                {"Content-Type": "application/json", "Set-Cookie": f"sid={TOKEN}"},
                echo,
            )
        )
        hidden = "".join(f"\\u{ord(c):04x}" for c in TOKEN)  # the token behind JSON escapes
        leak = f'{{"id": "x1", "type": "agent.message", "content": "{hidden}"}}'
        frame = f"id: x1\nevent: agent.message\ndata: {leak}\n\n"
        server.faults.inject_frames.append(frame.encode())
        lower = quote(TOKEN, safe="").replace("%2F", "%2f")  # lower-case escapes
        server.faults.respond_next.append(
            CannedResponse(
                "GET", r"/environments$", 502, {"Content-Type": "text/plain"}, lower.encode()
            )
        )
        async with (
            QoderClient(token=TOKEN, base_url=server.base_url, reconnect=FAST) as client,
            record(client, path, bodies=True),
        ):
            with pytest.raises(APIStatusError) as caught:
                [a async for a in client.agents.list()]
            assert TOKEN not in str(caught.value)
            # the token in a query value, in a path and in a header value
            await client.sessions.retrieve(
                session_id, extra_query={"key": TOKEN}, extra_headers={"X-Echo": TOKEN}
            )
            with pytest.raises(APIStatusError):
                await client.sessions.retrieve(f"sess_{TOKEN}")
            with pytest.raises(APIStatusError):
                no_retry = client.with_options(retry=RetryPolicy(max_retries=0))
                [e async for e in no_retry.environments.list()]
            assert await (await client.files.download(file_id)).read() == (
                f"the file says {TOKEN}".encode()
            )
            stream = client.sessions.events.stream(session_id)
            async with stream:
                async for _ in stream:
                    break
    text = path.read_text()
    for form in (TOKEN, quote(TOKEN, safe=""), "SECRET-4711", hidden[:30]):
        assert form not in text
    for record_ in lines(path):  # nor in an SSE frame's data, once its JSON is decoded
        with contextlib.suppress(ValueError, TypeError):
            assert "SECRET-4711" not in json.dumps(
                json.loads(record_.get("data")), ensure_ascii=False
            )
    assert "<redacted>" in text
    records = lines(path)
    assert records[0]["version"] == 1
    assert all(r.get("type") in ("http", "stream", "frame", "end") for r in records[1:])
    authorization = [
        r["request"]["headers"].get("Authorization")
        for r in records[1:]
        if r["type"] in ("http", "stream") and "path" in r
    ]
    assert authorization
    assert set(authorization) == {"<redacted>"}


# --------------------------------------------------------------------------- bodies


async def test_uploads_and_downloads_are_a_size_and_a_hash_unless_bodies(tmp_path: Path) -> None:
    content = os.urandom(3000)
    for bodies in (False, True):
        path = tmp_path / f"files-{bodies}.jsonl"
        async with FakeQoderServer() as live:
            async with QoderClient(token=live.token, base_url=live.base_url) as client:
                async with record(client, path, bodies=bodies):
                    meta = await client.files.upload(content, filename="blob.bin")
                    assert await (await client.files.download(meta.id)).read() == content
                    (tmp_path / "blob.bin").write_bytes(content)
                    streamed = await client.files.upload(tmp_path / "blob.bin")  # chunks
        records = [r for r in lines(path)[1:] if r["type"] == "http"]
        upload = next(r for r in records if r["method"] == "POST")
        download = next(r for r in records if "url" in r)  # the link of another origin
        body = download["response"]["body"]
        assert body["size"] == len(content)
        assert body["sha256"] == hashlib.sha256(content).hexdigest()
        assert upload["request"]["body"]["size"] > len(content)  # multipart
        assert ("base64" in body) is bodies
        assert ("base64" in upload["request"]["body"]) is bodies
        from_path = [r for r in records if r["method"] == "POST"][1]["request"]["body"]
        assert from_path["size"] == upload["request"]["body"]["size"]
        assert ("base64" in from_path) is bodies
        if bodies:  # the bytes as sent (the multipart boundary differs)
            assert content in base64.b64decode(from_path["base64"])
        async with FakeQoderServer(cassette=path, speed=0) as server:
            async with QoderClient(
                token=server.token, base_url=server.base_url, retry=RetryPolicy(max_retries=0)
            ) as client:
                again = await client.files.upload(content, filename="blob.bin")
                assert again.id == meta.id  # matched although the boundary is new
                assert (await client.files.upload(tmp_path / "blob.bin")).id == streamed.id
                if bodies:
                    assert await (await client.files.download(meta.id)).read() == content
                else:
                    with pytest.raises(APIStatusError, match="bodies=True"):
                        await (await client.files.download(meta.id)).read()


# --------------------------------------------------------------------------- bad cassettes


async def test_a_truncated_last_line_is_ignored(
    recorded: tuple[Path, str, tuple[Any, ...]], tmp_path: Path
) -> None:
    path, session_id, expected = recorded
    cut = tmp_path / "cut.jsonl"
    cut.write_text(path.read_text() + '{"type": "frame", "stream": 1, "da')
    async with FakeQoderServer(cassette=cut, speed=0) as server:
        async with QoderClient(
            token=server.token, base_url=server.base_url, reconnect=FAST
        ) as client:
            results = await asyncio.wait_for(conversation(client, session_id), TIMEOUT)
    assert tuple(same(r) for r in results) == expected


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"version": 2, "format": "qoder-async cassette"}\n', "version 2 is not supported"),
        ('{"format": "qoder-async cassette"}\n', "no 'version' field"),
        ("", "is empty"),
        ('{"version": 1}\nnot json\n{"type": "http"}\n', ":2: not a JSON object"),
        ('{"version": 1}\n[1, 2]\n', ":2: not a JSON object"),
        ('{"version": 1}\n{"no": "type"}\n', ":2: a record without a 'type'"),
    ],
    ids=["wrong-version", "no-version", "empty", "bad-line", "not-an-object", "no-type"],
)
def test_a_bad_cassette_is_a_clear_error(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=error) as caught:
        FakeQoderServer(cassette=path)
    assert str(path) in str(caught.value)


def test_speed_must_not_be_negative(recorded: tuple[Path, str, tuple[Any, ...]]) -> None:
    with pytest.raises(ValueError, match="speed"):
        FakeQoderServer(cassette=recorded[0], speed=-1)


async def test_a_stream_cancelled_mid_record_leaves_valid_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "cancelled.jsonl"
    async with FakeQoderServer(script=agent) as server:
        session_id = server.add_session()["id"]
        async with QoderClient(token=server.token, base_url=server.base_url) as client:
            async with record(client, path):
                stream = client.sessions.events.stream(session_id)
                got_one = asyncio.Event()

                async def follow() -> None:
                    async for event in stream:
                        if event.type == "agent.message":
                            got_one.set()

                task = asyncio.create_task(follow())
                await client.sessions.events.send(
                    session_id, [{"type": "user.message", "content": "Write me a novel"}]
                )
                await asyncio.wait_for(got_one.wait(), TIMEOUT)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await stream.aclose()
                # a stream still open when the block ends goes on, unrecorded
                late = client.sessions.events.stream(session_id)
                await late.__anext__()
            await late.__anext__()
            await late.aclose()
    text = path.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert any(r.get("type") == "frame" for r in records)
    ends = [r for r in records if r.get("type") == "end"]
    assert [e["how"] for e in ends] == ["cancelled"]


async def test_one_recording_per_client_and_its_copies_are_recorded(tmp_path: Path) -> None:
    async with FakeQoderServer() as server:
        session_id = server.add_session()["id"]
        async with QoderClient(token=server.token, base_url=server.base_url) as client:
            transport = client._http.transport
            copy = client.with_options(timeout=5.0)
            async with record(client, tmp_path / "a.jsonl"):
                assert client._http.transport is not transport
                with pytest.raises(ConfigurationError, match="already being recorded"):
                    async with record(copy, tmp_path / "b.jsonl"):
                        pass  # pragma: no cover
                await copy.sessions.retrieve(session_id)
            assert client._http.transport is transport  # no tap left behind: no cost
    [rec] = [r for r in lines(tmp_path / "a.jsonl")[1:] if r["type"] == "http"]
    assert rec["path"] == f"/sessions/{session_id}"
    with pytest.raises(TypeError, match="QoderClient"):
        async with record(object(), tmp_path / "c.jsonl"):
            pass  # pragma: no cover


# --------------------------------------------------------------------------- CLI, plugin, example


async def test_cli_record_writes_a_cassette_that_replays(tmp_path: Path) -> None:
    path = tmp_path / "cli.jsonl"
    async with FakeQoderServer() as server:
        session_id = server.add_session()["id"]
        env = server_env(server)
        result = await run("--json", "record", "-o", str(path), session_id, "Hello", env=env)
        assert result.code == 0, result
        token = server.token
    recorded = json.loads(result.lines[-1])["result"]
    assert "Hello" in recorded["text"]
    records = lines(path)
    assert records[0]["version"] == 1
    assert token not in path.read_text()
    assert any(r.get("type") == "frame" for r in records)
    async with FakeQoderServer(cassette=path, speed=0) as replay:
        async with QoderClient(token=replay.token, base_url=replay.base_url) as client:
            turn = await client.session(session_id).send("Hello")
            replayed = await asyncio.wait_for(turn.result(), TIMEOUT)
    assert replayed.text == recorded["text"]
    assert replayed.turn_id == recorded["turn_id"]


async def test_cli_record_refuses_an_unwritable_path(tmp_path: Path) -> None:
    async with FakeQoderServer() as server:
        session_id = server.add_session()["id"]
        target = tmp_path / "missing-dir" / "x.jsonl"
        result = await run("record", "-o", str(target), session_id, "hi", env=server_env(server))
    assert result.code == 2, result
    assert "cannot write the cassette" in result.err
    assert server.requests == []


PLUGIN_TEST = """
import os

import pytest


@pytest.mark.qoder_cassette("cassettes/hello.jsonl")
async def test_hello(qoder_client, qoder_fake_server):
    turn = await qoder_client.session(os.environ["TEST_SESSION"]).send("Hello")
    result = await turn.result()
    assert "Hello" in result.text
    assert (qoder_fake_server is None) == ("--qoder-record" in os.environ["TEST_MODE"])
"""


async def pytest_run(folder: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        *args,
        cwd=folder,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_pytest_marker_records_then_replays(tmp_path: Path) -> None:
    # (a marked test without its cassette fails, naming the way to record it)
    (tmp_path / "test_bot.py").write_text(PLUGIN_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the folder is its own project
    base = clean_env()
    code, out = await pytest_run(tmp_path, {**base, "TEST_SESSION": "sess_x", "TEST_MODE": ""})
    assert code != 0
    assert "no cassette" in out
    assert "record it with pytest --qoder-record" in out
    async with FakeQoderServer() as server:
        session_id = server.add_session()["id"]
        env = {**server_env(server), **base, "TEST_SESSION": session_id}
        code, out = await pytest_run(
            tmp_path, {**env, "TEST_MODE": "--qoder-record"}, "--qoder-record"
        )
        assert code == 0, out
        assert len(server.user_messages(session_id)) == 1
    cassette = tmp_path / "cassettes" / "hello.jsonl"
    assert json.loads(cassette.read_text().splitlines()[0])["version"] == 1
    # replay: the live server is gone, no Qoder settings at all
    code, out = await pytest_run(tmp_path, {**base, "TEST_SESSION": session_id, "TEST_MODE": ""})
    assert code == 0, out
    assert "1 passed" in out
    # recording without a token or a base URL is refused, clearly
    code, out = await pytest_run(
        tmp_path,
        {**base, "TEST_SESSION": session_id, "TEST_MODE": "--qoder-record"},
        "--qoder-record",
    )
    assert code != 0
    assert "set QODER_PAT and QODER_BASE_URL" in out


@pytest.mark.both_transports
async def test_record_and_replay_on_every_transport(
    client: QoderClient, server: FakeQoderServer, session_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "transport.jsonl"
    async with record(client, path):
        recorded = await (await client.session(session_id).send("Hello")).result()
    async with FakeQoderServer(cassette=path, speed=0) as replay:
        async with QoderClient(token=replay.token, base_url=replay.base_url) as again:
            replayed = await (await again.session(session_id).send("Hello")).result()
    assert same(replayed) == same(recorded)
    assert any(r.get("type") == "frame" for r in lines(path))
