"""The project's own quality gates, run with the tests: ruff and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run("mypy", "--strict", "qoder_async")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_examples_type_check_as_users_write_them() -> None:
    """User code type-checks strictly against the public API (e.g. tool call ids are str)."""
    result = _run("mypy", "--strict", "examples")
    assert result.returncode == 0, result.stdout + result.stderr
