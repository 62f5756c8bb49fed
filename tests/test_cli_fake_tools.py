"""``qoder-async fake-server --script tools --tool-name NAME --tool-input JSON``: your tool.

The server runs as a real subprocess; a client in this process answers the tool call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import run_elsewhere

from qoder_async import QoderClient
from qoder_async._cli import EXIT_USAGE, main

HANG = 30.0  # seconds: only a hang takes this long


def clean_env() -> dict[str, str]:
    """No Qoder settings (no test may reach the real API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def test_the_fake_calls_the_tool_named_with_the_input_given() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qoder_async",
        "fake-server",
        "--script",
        "tools",
        "--tool-name",
        "lookup_order",
        "--tool-input",
        '{"order_id": 42, "fields": ["status"]}',
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        values: dict[str, str] = {}
        async with asyncio.timeout(HANG):
            while "export" not in values:  # the export line comes last
                line = (await proc.stdout.readline()).decode().strip()
                assert line, "fake-server ended early"
                key, _, value = line.partition("=")
                values[key.split()[0]] = value
            note = ""
            while "lookup_order" not in note:
                note = (await proc.stderr.readline()).decode()
                assert note, "fake-server ended early"
        assert 'lookup_order(order_id=42, fields=["status"])' in note
        calls: list[Mapping[str, Any]] = []

        async def lookup_order(tool_input: Mapping[str, Any]) -> str:
            calls.append(tool_input)
            return "shipped"

        async with QoderClient(token=values["token"], base_url=values["base_url"]) as client:
            turn = await client.session(values["session_id"]).send(
                "Where is my order?", tools={"lookup_order": lookup_order}
            )
            result = await asyncio.wait_for(turn.result(), HANG)
        assert calls == [{"order_id": 42, "fields": ["status"]}]
        assert result.text == "lookup_order returned: shipped"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), HANG)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--tool-input", "[1, 2]"], "must be a JSON object"),
        (["--tool-input", "{city: Paris}"], "not valid JSON"),
        (["--tool-name", " "], "the tool name is empty"),
    ],
)
def test_a_bad_tool_option_is_a_usage_error(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_elsewhere(main, ["fake-server", "--script", "tools", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err


def test_tool_options_need_the_tools_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_elsewhere(main, ["fake-server", "--tool-name", "lookup_order"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--tool-name and --tool-input need --script tools" in err
    assert len(err.strip().splitlines()) == 1, err
