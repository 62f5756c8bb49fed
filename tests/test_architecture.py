"""Rules of the code base that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import qoder_async

PACKAGE = Path(qoder_async.__file__).parent
CORE = (
    "_stream.py",
    "_turns.py",
    "_backoff.py",
    "_models.py",
    "_convert.py",
    "_errors.py",
    "_lease.py",
)
IO_MODULES = {
    "httpx",
    "httpx_sse",
    "httpx_aiohttp",
    "aiohttp",
    "asyncio",
    "anyio",
    "socket",
    "redis",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("." + (node.module or ""))
    return found


def test_core_modules_do_no_io() -> None:
    for name in CORE:
        leaked = _imports(PACKAGE / name) & IO_MODULES
        assert not leaked, f"{name} imports {leaked}: the core must stay sans-I/O"


def test_testing_package_never_imports_the_client() -> None:
    # The pytest plugin is the one bridge: its fixtures hand out a QoderClient.
    for path in (PACKAGE / "testing").glob("*.py"):
        if path.name == "pytest_plugin.py":
            continue
        rel = {m for m in _imports(path) if m.startswith(".") and m != "."}
        absolute = {m for m in _imports(path) if m == "qoder_async"}
        text = path.read_text()
        assert "qoder_async._" not in text, path
        assert not absolute, f"{path.name} imports qoder_async"
        assert all(not m.startswith(".._") for m in rel), path


def test_public_all_is_sorted_and_complete() -> None:
    names = qoder_async.__all__
    assert names == sorted(names)
    for name in names:
        obj = getattr(qoder_async, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
    assert "QoderClient" in names
    assert "FakeQoderServer" not in names  # lives in qoder_async.testing


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
