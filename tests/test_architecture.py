"""Rules of the code base that a reviewer would otherwise have to remember.

The package is layered, imports run one way (top to bottom), and the core does
no I/O:

=========================  ==============================================================
layer                      modules
=========================  ==============================================================
the top                    ``__init__``, ``types``, ``_cli``, ``__main__``, ``fleet``, ``webhooks``
the fleet's coordinators   ``_coordinators`` (memory, Redis)
the client                 ``_client``
the turn API               ``_session``, ``_tools``, ``_tracing``, ``_metrics``
resources                  ``_resources``
streams, pages and files   ``_eventstream``, ``_pagination``, ``_files``
the request layer          ``_http``
transports                 ``_transport``
the core (sans-I/O)        ``_machine``, ``_turns``, ``_lease``, ``_stream``, ``_convert``,
                           ``_backoff``, ``_models``, ``_params``, ``_errors``, ``_version``
=========================  ==============================================================
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import qoder_async

PACKAGE = Path(qoder_async.__file__).parent
CORE = (
    "_stream.py",
    "_turns.py",
    "_machine.py",
    "_lease.py",
    "_backoff.py",
    "_models.py",
    "_params.py",
    "_convert.py",
    "_errors.py",
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

# Every import edge inside the package, exactly: a new one is a design decision.
ALLOWED_EDGES: dict[str, set[str]] = {
    "__init__": {
        "_tools",
        "_backoff",
        "_client",
        "_errors",
        "_eventstream",
        "_files",
        "_models",
        "_pagination",
        "_resources",
        "_session",
        "_transport",
        "_turns",
        "_version",
    },
    "types": {"_models", "_params"},
    "__main__": {"_cli"},
    "_cli": {"qoder_async", "qoder_async.testing", "qoder_async.types"},
    "fleet": {
        "_backoff",
        "_client",
        "_convert",
        "_coordinators",
        "_errors",
        "_eventstream",
        "_lease",
        "_models",
        "_pagination",
        "_resources",
        "_stream",
        "_tools",
        "_turns",
    },
    "_coordinators": {"_backoff", "_errors", "_lease"},
    "webhooks": {"_errors", "_models"},
    "_client": {
        "_tracing",
        "_metrics",
        "_backoff",
        "_errors",
        "_eventstream",
        "_http",
        "_resources",
        "_session",
        "_transport",
    },
    "_session": {
        "_tracing",
        "_tools",
        "_backoff",
        "_errors",
        "_eventstream",
        "_http",
        "_machine",
        "_models",
        "_resources",
        "_stream",
        "_turns",
    },
    "_resources": {
        "_tools",
        "_backoff",
        "_convert",
        "_errors",
        "_eventstream",
        "_files",
        "_http",
        "_models",
        "_pagination",
        "_params",
        "_stream",
        "_transport",
    },
    "_eventstream": {"_backoff", "_errors", "_http", "_machine", "_models", "_stream"},
    "_pagination": {"_convert", "_errors", "_http"},
    "_files": {"_errors", "_http", "_models", "_transport"},
    "_http": {"_backoff", "_errors", "_models", "_transport", "_version"},
    "_transport": {"_errors"},
    "_tools": {"_errors", "_models", "_turns"},
    "_tracing": {"_metrics", "_version"},
    "_metrics": {"_errors", "_http", "_version"},
    "_machine": {"_backoff", "_errors", "_models", "_stream"},
    "_turns": {"_models", "_stream"},
    "_lease": {"_backoff", "_errors", "_models", "_stream"},
    "_stream": {"_convert", "_errors", "_models"},
    "_convert": {"_models"},
    "_backoff": set(),
    "_models": set(),
    "_params": set(),
    "_errors": set(),
    "_version": set(),
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


def _package_edges(path: Path) -> set[str]:
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            relative = node.level == 1 and node.module
            ours = node.level == 0 and (node.module or "").startswith("qoder_async")
            if (relative or ours) and node.module:
                edges.add(node.module)
        elif isinstance(node, ast.Import):
            edges.update(a.name for a in node.names if a.name.startswith("qoder_async"))
    return edges


def test_core_modules_do_no_io() -> None:
    for name in CORE:
        leaked = _imports(PACKAGE / name) & IO_MODULES
        assert not leaked, f"{name} imports {leaked}: the core must stay sans-I/O"


def test_imports_follow_the_table_of_allowed_edges() -> None:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    assert set(modules) == set(ALLOWED_EDGES), "a module was added or removed: update the table"
    for name, path in modules.items():
        edges = _package_edges(path)
        assert edges == ALLOWED_EDGES[name], f"{name} imports {sorted(edges)}"


def test_the_import_graph_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import cycle: {' -> '.join((*stack, node))}"
        if seen.get(node):
            return
        for nxt in ALLOWED_EDGES.get(node, ()):
            if nxt in ALLOWED_EDGES:
                visit(nxt, (*stack, node))
        seen[node] = 1

    for module in ALLOWED_EDGES:
        visit(module, ())


def test_no_import_hides_inside_a_function() -> None:
    """An import inside a function is how cycles get dodged; none is allowed.

    The pytest plugin is the one exception, for another reason: pytest loads it
    in every project where qoder-async is installed, so its fixtures import the
    client only when a test uses them.
    """
    for path in [*PACKAGE.glob("*.py"), *(PACKAGE / "testing").glob("*.py")]:
        if path.name == "pytest_plugin.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    assert not isinstance(inner, ast.Import | ast.ImportFrom), (
                        f"{path.name}:{inner.lineno} imports inside {node.name}()"
                    )


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


def test_no_private_attribute_of_another_library_is_read() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "_aiohttp_response" not in text, path
        assert "httpx_aiohttp" not in text, path


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
