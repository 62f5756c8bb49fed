"""Every README code block is checked, so the documentation cannot rot.

=================================================  ========================================
a ``python`` block that...                         is
=================================================  ========================================
defines ``test_...`` functions                     run with pytest in a throwaway project
                                                   (pytest-asyncio's default strict mode,
                                                   nothing but what the README says)
calls ``asyncio.run(``                              run as a program against a fake server
                                                   (``QODER_PAT``/``QODER_BASE_URL`` set),
                                                   must exit 0
anything else (a fragment)                         compiled (top-level ``await`` allowed)
=================================================  ========================================

An HTML comment right before a block can say more:
``<!-- readme: script=tools -->`` runs the fake agent's tool script for it
(``default``, ``tools``, ``multiagent``), ``<!-- readme: skip reason -->`` skips it,
``<!-- readme: processes -->`` marks a program run as several processes with
arguments, as its section shows: ``test_readme_patterns.py`` runs it (its first
line names it there).
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from qoder_async.testing import FakeQoderServer, default_script, multiagent_script, tool_script

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- readme: (?P<directive>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S
)
SCRIPTS = {
    "default": default_script,
    "tools": tool_script("get_weather", {"city": "Paris"}),
    "multiagent": multiagent_script,
}


class Block(NamedTuple):
    line: int
    lang: str
    code: str
    directive: str

    @property
    def kind(self) -> str:
        if re.search(r"^(async )?def test_", self.code, re.M):
            return "pytest"
        if "asyncio.run(" in self.code:
            return "program"
        return "fragment"


def _blocks() -> list[Block]:
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        out.append(Block(line, m.group("lang"), m.group("code"), m.group("directive") or ""))
    return out


PYTHON = [b for b in _blocks() if b.lang == "python"]


def _ids(block: Block) -> str:
    return f"line{block.line}-{block.kind}"


def test_the_readme_has_programs_tests_and_fragments() -> None:
    kinds = {b.kind for b in PYTHON}
    assert kinds == {"pytest", "program", "fragment"}


@pytest.mark.parametrize("block", [b for b in PYTHON if b.kind == "fragment"], ids=_ids)
def test_fragments_compile(block: Block) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compile(block.code, f"README.md:{block.line}", "exec", flags=flags, dont_inherit=True)


PROCESSES = [b for b in PYTHON if b.directive == "processes"]


@pytest.mark.parametrize("block", PROCESSES, ids=_ids)
def test_programs_of_several_processes_are_run_by_the_patterns_tests(block: Block) -> None:
    name = block.code.splitlines()[0].strip('"')
    assert name in (Path(__file__).parent / "test_readme_patterns.py").read_text()


@pytest.mark.parametrize(
    "block", [b for b in PYTHON if b.kind == "program" and b not in PROCESSES], ids=_ids
)
async def test_programs_run_against_the_fake_server(block: Block, tmp_path: Path) -> None:
    if block.directive.startswith("skip"):
        pytest.skip(block.directive)
    script = "default"
    if block.directive.startswith("script="):
        script = block.directive.removeprefix("script=").strip()
    program = tmp_path / "program.py"
    program.write_text(block.code)
    async with FakeQoderServer(script=SCRIPTS[script], heartbeat_interval=0.2) as server:
        env = {
            **os.environ,
            "QODER_PAT": server.token,
            "QODER_BASE_URL": server.base_url,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("QODER_ACCESS_TOKEN", None)
        proc = await _run([sys.executable, str(program)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"README.md:{block.line}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("block", [b for b in PYTHON if b.kind == "pytest"], ids=_ids)
async def test_test_snippets_pass_in_a_fresh_project(block: Block, tmp_path: Path) -> None:
    (tmp_path / "test_from_readme.py").write_text(block.code)
    proc = await _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"README.md:{block.line}\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"\d+ passed", proc.stdout)


class _Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


async def _run(argv: list[str], *, env: dict[str, str], cwd: Path) -> _Done:
    """Run a process without blocking the loop the fake server runs on."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    return _Done(proc.returncode or 0, out.decode(), err.decode())
