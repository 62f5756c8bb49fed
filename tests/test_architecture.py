"""Rules of the code base that a reviewer would otherwise have to remember.

The package is layered, imports run one way (top to bottom: a module imports
only from its own layer or a lower one), and the core does no I/O. Modules are
named by their dotted path inside ``qoder_async`` (``fleet._lease`` is
``qoder_async/fleet/_lease.py``; a package by its folder, the top one as
``__init__``). The private layers live in folders (``_core/`` sans-I/O,
``_shell/`` I/O, ``_api/`` resources, ``_turn/`` the turn API; ``FOLDERS``).
The table is ``render_layers(LAYERS)`` (a test checks it):

==========================  ======================================================================
layer                       modules
==========================  ======================================================================
the command line            ``__main__``, ``_cli``
testing                     ``testing``, ``testing._agent``, ``testing._cassette``,
                            ``testing._faults``, ``testing._files``, ``testing._deployments``,
                            ``testing._params``, ``testing._record``, ``testing._server``,
                            ``testing._sse``, ``testing._state``, ``testing._vaults``,
                            ``testing._webhooks``, ``testing._wire``, ``testing.pytest_plugin``
the public modules          ``__init__``, ``types``, ``webhooks``, ``fleet``
the fleet                   ``fleet._fleet``, ``fleet._coordinators``
the client                  ``_client``
the turn API                ``_turn``, ``_turn.session``, ``_turn.tracing``, ``_turn.metrics``
resources                   ``_api.resources``, ``_api.deployments``, ``_api.vaults``
custom tools                ``_api``, ``_api.tools``
streams, pages and files    ``_shell.eventstream``, ``_shell.pagination``, ``_shell.files``
the request layer           ``_shell.http``
transports                  ``_shell``, ``_shell.transport``, ``_shell.tasks``
the core (sans-I/O)         ``_core``, ``_core.machine``, ``_core.turns``, ``fleet._lease``,
                            ``_core.sse``, ``_core.convert``, ``_core.backoff``, ``_core.models``,
                            ``_core.params``, ``_core.errors``, ``_core.rules``, ``_core.version``
==========================  ======================================================================
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import qoder_async

PACKAGE = Path(qoder_async.__file__).parent

# The layers, top to bottom (the docstring's table is ``render_layers(LAYERS)``).
LAYERS: dict[str, tuple[str, ...]] = {
    "the command line": ("__main__", "_cli"),
    # The fake server imports nothing of the client; its pytest plugin hands one out.
    "testing": (
        "testing",
        "testing._agent",
        "testing._cassette",
        "testing._faults",
        "testing._files",
        "testing._deployments",
        "testing._params",
        "testing._record",
        "testing._server",
        "testing._sse",
        "testing._state",
        "testing._vaults",
        "testing._webhooks",
        "testing._wire",
        "testing.pytest_plugin",
    ),
    "the public modules": ("__init__", "types", "webhooks", "fleet"),
    "the fleet": ("fleet._fleet", "fleet._coordinators"),
    "the client": ("_client",),
    "the turn API": ("_turn", "_turn.session", "_turn.tracing", "_turn.metrics"),
    "resources": ("_api.resources", "_api.deployments", "_api.vaults"),
    "custom tools": (
        "_api",
        "_api.tools",
    ),  # agents are created with tool definitions: below resources
    "streams, pages and files": ("_shell.eventstream", "_shell.pagination", "_shell.files"),
    "the request layer": ("_shell.http",),
    "transports": ("_shell", "_shell.transport", "_shell.tasks"),
    "the core (sans-I/O)": (
        "_core",
        "_core.machine",
        "_core.turns",
        "fleet._lease",
        "_core.sse",
        "_core.convert",
        "_core.backoff",
        "_core.models",
        "_core.params",
        "_core.errors",
        "_core.rules",
        "_core.version",
    ),
}
CORE = LAYERS["the core (sans-I/O)"]
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


def render_layers(layers: dict[str, tuple[str, ...]]) -> str:
    """The reStructuredText table of ``layers``, as the module docstring shows it."""
    left, right = 26, 70
    rule = f"{'=' * left}  {'=' * right}"
    rows = [rule, f"{'layer':<{left}}  modules", rule]
    for layer, modules in layers.items():
        cells = ", ".join(f"``{m}``" for m in modules)
        for i, line in enumerate(textwrap.wrap(cells, right, break_on_hyphens=False)):
            rows.append(f"{layer if i == 0 else '':<{left}}  {line}".rstrip())
    rows.append(rule)
    return "\n".join(rows)


# Every import edge inside the package, exactly: a new one is a design decision.
ALLOWED_EDGES: dict[str, set[str]] = {
    "__init__": {
        "_api.tools",
        "_core.backoff",
        "_client",
        "_core.errors",
        "_shell.eventstream",
        "_shell.files",
        "_core.models",
        "_shell.pagination",
        "_api.resources",
        "_turn.session",
        "_shell.transport",
        "_core.turns",
        "_core.version",
    },
    "types": {"_core.models", "_core.params"},
    "__main__": {"_cli"},
    "_cli": {"__init__", "testing", "types"},
    "testing": {
        "testing._agent",
        "testing._faults",
        "testing._record",
        "testing._server",
        "testing._webhooks",
    },
    "testing._cassette": {"testing._faults", "testing._state", "testing._wire"},
    "testing._record": {"testing._cassette"},
    "testing._agent": {"testing._faults", "testing._params", "testing._state", "testing._wire"},
    "testing._faults": {"testing._wire"},
    "testing._files": {"testing._params", "testing._wire"},
    "testing._deployments": {"testing._params", "testing._wire"},
    "testing._params": {"testing._wire"},
    "testing._server": {
        "testing._agent",
        "testing._cassette",
        "testing._faults",
        "testing._files",
        "testing._deployments",
        "testing._params",
        "testing._sse",
        "testing._state",
        "testing._vaults",
        "testing._webhooks",
        "testing._wire",
    },
    "testing._sse": {"testing._faults", "testing._state", "testing._wire"},
    "testing._state": {"testing._faults", "testing._wire"},
    "testing._vaults": {"testing._params", "testing._wire"},
    "testing._webhooks": {"testing._wire"},
    "testing._wire": set(),
    "testing.pytest_plugin": {"__init__", "testing"},
    "fleet": {"_core.errors", "fleet._coordinators", "fleet._fleet", "fleet._lease"},
    "fleet._fleet": {
        "_core.backoff",
        "_client",
        "_core.convert",
        "_core.errors",
        "_shell.eventstream",
        "_core.models",
        "_shell.pagination",
        "_api.resources",
        "_core.sse",
        "_api.tools",
        "_core.turns",
        "_shell.tasks",
        "fleet._coordinators",
        "fleet._lease",
    },
    "fleet._coordinators": {"_core.backoff", "_core.errors", "_shell.tasks", "fleet._lease"},
    "webhooks": {"_core.errors", "_core.models"},
    "_client": {
        "_api.deployments",
        "_api.vaults",
        "_turn.tracing",
        "_turn.metrics",
        "_core.backoff",
        "_core.errors",
        "_shell.eventstream",
        "_shell.http",
        "_api.resources",
        "_turn.session",
        "_shell.transport",
    },
    "_turn.session": {
        "_turn.tracing",
        "_api.tools",
        "_core.backoff",
        "_core.errors",
        "_shell.eventstream",
        "_shell.http",
        "_shell.tasks",
        "_core.machine",
        "_core.models",
        "_api.resources",
        "_core.sse",
        "_core.turns",
    },
    "_api.deployments": {
        "_api.resources",
        "_core.convert",
        "_core.errors",
        "_core.models",
        "_core.params",
        "_shell.http",
        "_shell.pagination",
        "_shell.transport",
    },
    "_api.vaults": {
        "_api.resources",
        "_core.convert",
        "_core.models",
        "_shell.files",
        "_shell.http",
        "_shell.pagination",
    },
    "_api.resources": {
        "_api.tools",
        "_core.backoff",
        "_core.convert",
        "_core.errors",
        "_shell.eventstream",
        "_shell.files",
        "_shell.http",
        "_core.models",
        "_shell.pagination",
        "_core.params",
        "_core.sse",
        "_shell.transport",
    },
    "_shell.eventstream": {
        "_core.backoff",
        "_core.errors",
        "_shell.http",
        "_core.machine",
        "_core.models",
        "_core.sse",
    },
    "_shell.pagination": {"_core.convert", "_core.errors", "_core.models", "_shell.http"},
    "_shell.files": {"_core.errors", "_shell.http", "_core.models", "_shell.transport"},
    "_shell.http": {
        "_core.backoff",
        "_core.errors",
        "_core.models",
        "_shell.transport",
        "_core.version",
    },
    "_shell.transport": {"_core.errors"},
    "_api.tools": {"_core.errors", "_core.models", "_core.turns"},
    "_turn.tracing": {"_turn.metrics", "_core.version"},
    "_turn.metrics": {"_core.errors", "_shell.http", "_core.version"},
    "_core.machine": {
        "_core.backoff",
        "_core.errors",
        "_core.models",
        "_core.rules",
        "_core.sse",
    },
    "_core.turns": {"_core.models", "_core.rules", "_core.sse"},
    "fleet._lease": {
        "_core.backoff",
        "_core.errors",
        "_core.models",
        "_core.rules",
        "_core.sse",
    },
    "_core.sse": {"_core.convert", "_core.errors", "_core.models"},
    "_core.convert": {"_core.models"},
    "_core.backoff": set(),
    "_core.models": set(),
    "_core.params": set(),
    "_core.errors": {"_core.rules"},
    "_core.rules": set(),
    "_shell.tasks": set(),
    "_core.version": set(),
    "_core": set(),
    "_shell": set(),
    "_api": set(),
    "_turn": set(),
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


def _module_name(path: Path) -> str:
    """``fleet/_lease.py`` -> ``fleet._lease``; a package's ``__init__.py`` -> its folder."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _ours(absolute: str) -> str | None:
    """The module name of an absolute import, or ``None`` when it is not ours."""
    if absolute == "qoder_async":
        return "__init__"
    if absolute.startswith("qoder_async."):
        return absolute.removeprefix("qoder_async.")
    return None


def _package_edges(path: Path) -> set[str]:
    """The modules of the package that ``path`` imports, by module name (absolute or relative)."""
    package = path.relative_to(PACKAGE).parent.parts  # the package the file's ``.`` means
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            targets = [node.module] if node.module else [a.name for a in node.names]
            for target in targets:
                edges.add(_ours(".".join(("qoder_async", *base, target))) or "")
        elif isinstance(node, ast.ImportFrom) and node.module:
            edges.add(_ours(node.module) or "")
        elif isinstance(node, ast.Import):
            edges.update(_ours(a.name) or "" for a in node.names)
    edges.discard("")
    return edges


# Each private folder holds a run of adjacent layers, so the tree shows the architecture.
FOLDERS: dict[str, tuple[str, ...]] = {
    "_turn": ("the turn API",),
    "_api": ("resources", "custom tools"),
    "_shell": ("streams, pages and files", "the request layer", "transports"),
    "_core": ("the core (sans-I/O)",),
    "fleet": ("the public modules", "the fleet", "the core (sans-I/O)"),
    "testing": ("testing",),
}


def test_the_folders_show_the_layers() -> None:
    order = list(LAYERS)
    layer = {m: name for name, modules in LAYERS.items() for m in modules}
    for folder, layers in FOLDERS.items():
        ranks = [order.index(name) for name in layers]
        assert ranks == sorted(ranks), f"{folder}: list its layers top to bottom"
        inside = [m for m in MODULES if m == folder or m.startswith(folder + ".")]
        assert inside, folder
        for module in inside:
            assert layer[module] in layers, (
                f"{module} is in {layer[module]!r}, not a layer of {folder}/"
            )
    for name in ("the core (sans-I/O)", "the turn API", "resources", "transports"):
        # the private layers live in their folders; only the public face stays at the top
        for module in LAYERS[name]:
            assert "." in module or module in FOLDERS, f"{module} belongs in a folder"


def test_core_modules_do_no_io() -> None:
    for name in CORE:
        leaked = _imports(MODULES[name]) & IO_MODULES
        assert not leaked, f"{name} imports {leaked}: the core must stay sans-I/O"


def test_imports_follow_the_table_of_allowed_edges() -> None:
    assert set(MODULES) == set(ALLOWED_EDGES), "a module was added or removed: update the table"
    for name, path in MODULES.items():
        edges = _package_edges(path)
        assert edges == ALLOWED_EDGES[name], f"{name} imports {sorted(edges)}"


def test_every_module_is_in_exactly_one_layer() -> None:
    placed = [m for modules in LAYERS.values() for m in modules]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == set(MODULES), "a module was added or removed: put it in a layer"


def test_imports_only_go_down_the_layers() -> None:
    rank = {m: i for i, modules in enumerate(LAYERS.values()) for m in modules}
    layer = {m: name for name, modules in LAYERS.items() for m in modules}
    for name, path in MODULES.items():
        for imported in _package_edges(path):
            assert rank[imported] >= rank[name], (
                f"{name} ({layer[name]}) imports {imported} ({layer[imported]}), "
                "a higher layer: imports only go down"
            )


def test_the_docstring_table_is_the_layers() -> None:
    assert render_layers(LAYERS) in (__doc__ or ""), (
        "the layer table in this docstring is not LAYERS: paste render_layers(LAYERS)"
    )


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
    for path in MODULES.values():
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
