"""Every example runs, as a user would run it, against the fake API it starts itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # No Qoder settings: an example must never reach the real API from the test suite.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=EXAMPLES.parent,
        check=False,
    )


def test_examples_are_documented() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == [
        "chat.py",
        "custom_tools.py",
        "fleet_bot.py",
        "many_sessions.py",
        "replay_cassette.py",
        "webhook_bot.py",
    ]
    for script in scripts:
        assert f"`{script}`" in readme, script


def test_chat() -> None:
    result = run_example("chat.py", "What does app.py do?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("session: sess_")
    assert lines[1] == "you: What does app.py do?"
    assert lines[2].startswith('You said: "What does app.py do?"')
    assert lines[3] == "stop reason: end_turn; tool calls: ['Read']"
    assert re.fullmatch(r"usage: \d+ in / \d+ out tokens", lines[4])


def test_replay_cassette_replays_the_committed_cassette() -> None:
    result = run_example("replay_cassette.py")
    assert result.returncode == 0, result.stderr
    reply = "It is 18 C, light rain in Paris: take a light raincoat and an umbrella."
    assert result.stdout.splitlines() == [
        f"replayed: {reply}",
        "  tool: get_weather({'city': 'Paris'}) -> Paris: 18 C, light rain",
        "  stop reason: end_turn; events: 8",
        f"replayed with drops and duplicates: {reply}",
        "  tool: get_weather({'city': 'Paris'}) -> Paris: 18 C, light rain",
        "  stop reason: end_turn; events: 8",
        "same turn both times: True",
    ]
    assert "QODER_" not in result.stderr


def test_webhook_bot_self_test() -> None:
    result = run_example("webhook_bot.py", "--self-test")
    assert result.returncode == 0, result.stderr
    assert "self-test passed: 3 replies, 2 sessions" in result.stdout


def test_webhook_bot_webhook_mode_self_test() -> None:
    # Replies come from signed webhooks and catch-ups; no event stream is opened.
    result = run_example("webhook_bot.py", "--webhooks", "--self-test")
    assert result.returncode == 0, result.stderr
    assert "webhook self-test passed: 3 replies, 2 sessions, no event stream" in result.stdout
    assert "alice: ['Echo: first from alice" in result.stdout


def test_custom_tools() -> None:
    result = run_example("custom_tools.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        'agent calls get_weather({"city": "Paris"})',
        "our tool answered: 18°C and sunny in Paris",
        "agent: get_weather returned: 18°C and sunny in Paris",
    ]


def test_many_sessions() -> None:
    sessions = 50  # the default is 200; fewer keep CI quick
    result = run_example("many_sessions.py", "--sessions", str(sessions))
    assert result.returncode == 0, result.stderr
    assert f"sessions: {sessions}, turns ended: {sessions}, events: " in result.stdout
    assert "wall time: " in result.stdout


def test_real_mode_without_a_token_names_what_is_missing() -> None:
    result = run_example("chat.py", "--real")
    assert result.returncode != 0
    assert "QODER_PAT" in result.stderr
