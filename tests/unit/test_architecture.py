"""The shape of the code, checked from the source: import cycles, `azure.functions` kept out of the
library, and the layers of `shared/` (docs/architecture.md, The layers).

Every `import` / `from ... import` counts, wherever it is: at module level, inside a function (a
deferred import is still a dependency, only a later one), and under `if TYPE_CHECKING:` (a type
dependency still couples the layers). An edge goes to the module named: `from shared.sync import
bulk` is an edge to `shared.sync.bulk`, `from shared.sync.bulk import x` too; the parent packages a
Python import also runs (`shared`, `shared.sync`) are not counted, or every submodule would be in a
cycle with a package `__init__` that re-exports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# Top-level modules of `shared/` that the layers build on. `shared.runtime` is the composition root:
# it wires everything together, so it is no base module and no layer may import it.
BASE_MODULES = {
    "shared",
    "shared.settings",
    "shared.messages",
    "shared.timestamps",
    "shared.auth",
    "shared.odata",
    "shared.errors",
    "shared.companies",
    "shared.ncrontab",
    "shared.telemetry",
    "shared.telemetry_file",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({module_path(self.importer)}:{self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> str:
    path = ROOT.joinpath(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


def source_files() -> list[Path]:
    files = [ROOT / "function_app.py"]
    for package in ("shared", "sync_functions"):
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return files


MODULES: dict[str, Path] = {module_name(p): p for p in source_files()}


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, with relative imports resolved against `importer`."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):  # every level: functions, classes, `if TYPE_CHECKING:`, try/except
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(name, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                # `from package import submodule` depends on the submodule, not on the package.
                yield Import(name, submodule if submodule in MODULES else target, node.lineno)


IMPORTS: list[Import] = [i for name in sorted(MODULES) for i in imports_of(name)]


def internal_graph(prefix: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES if _under(name, prefix)}
    for i in IMPORTS:
        if i.importer in graph and i.imported in graph and i.imported != i.importer:
            graph[i.importer].add(i.imported)
    return graph


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to worry about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, as a path back to its start."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        successors = sorted(graph[path[-1]] & component)
        if start in successors and len(path) > 1:
            return [*path, start]
        fresh = [s for s in successors if s not in seen]
        if not fresh:  # every successor visited: close the loop where it comes back
            back = successors[0]
            return [*path[path.index(back) :], back]
        path.append(fresh[0])
        seen.add(fresh[0])


def describe(cycle: list[str]) -> str:
    lines = []
    for a, b in pairwise(cycle):
        where = next(i for i in IMPORTS if i.importer == a and i.imported == b)
        lines.append(f"  {where}")
    return " -> ".join(cycle) + "\n" + "\n".join(lines)


def cycles_in_shared() -> list[tuple[set[str], list[str]]]:
    graph = internal_graph("shared")
    return [(c, a_cycle(graph, c)) for c in strongly_connected(graph) if len(c) > 1]


# ------------------------------------------------------------------------------------------ tests
def test_every_module_is_parsed() -> None:
    # A sanity check on the walk itself: the layers and the blueprints are all there.
    for expected in ("shared.sync.engine", "shared.ops.admin_api", "sync_functions.admin", "function_app"):
        assert expected in MODULES
    assert any(i.importer == "shared.runtime" and i.imported == "shared.sync.engine" for i in IMPORTS), (
        "imports under `if TYPE_CHECKING:` must be counted"
    )


def test_no_import_cycles_in_shared() -> None:
    found = cycles_in_shared()
    cycles = [describe(cycle) for _, cycle in found]
    assert not cycles, "import cycles in shared/:\n" + "\n".join(cycles)


def test_shared_does_not_import_azure_functions() -> None:
    offending = [
        str(i)
        for i in IMPORTS
        if _under(i.importer, "shared") and (_under(i.imported, "azure.functions") or i.imported == "azure")
    ]
    assert not offending, "shared/ is the library; azure.functions belongs in sync_functions/:\n" + "\n".join(
        offending
    )


def _shared_layer(module: str) -> str | None:
    """`connectors` for `shared.connectors.dataverse`; None for the top-level (base) modules."""
    parts = module.split(".")
    if parts[0] != "shared" or len(parts) < 2:
        return None
    return parts[1] if (ROOT / "shared" / parts[1]).is_dir() else None


# What each layer of `shared/` may import besides the base modules and itself, as the table in
# docs/architecture.md (The layers) says; `ops` may import everything in `shared/`.
LAYERS: dict[str, tuple[str, ...]] = {
    "mapping": (),
    "connectors": (),
    "store": (
        "mapping",
        "connectors",
    ),  # connectors: the `RequestBudget` interface the shared budget implements
    "sync": ("mapping", "connectors", "store"),
    "feeds": ("mapping", "connectors", "store", "sync"),
    "sales": ("mapping", "connectors", "store", "sync", "feeds"),
}
# `shared.runtime` wires everything, so only what sits above the engine may know it: the entry
# modules the Functions blueprints call, and what they hand the runtime to.
RUNTIME_USERS = ("shared.sync.processor", "shared.feeds", "shared.sales", "shared.ops", "shared.startup")
# Who asks for the process's runtime (`get_runtime()`) instead of receiving it as an argument.
GET_RUNTIME_CALLERS = ("shared.sync.processor", "shared.feeds.webhooks", "shared.feeds.poll", "shared.ops")


def _violations(layer: str, allowed: Iterable[str]) -> list[str]:
    """Imports from `shared.<layer>` into `shared` modules outside the base modules, the layer itself,
    `allowed` and (for the runtime's users) `shared.runtime`."""
    bad = []
    for i in IMPORTS:
        if _shared_layer(i.importer) != layer or not _under(i.imported, "shared"):
            continue
        target_layer = _shared_layer(i.imported)
        ok = (
            i.imported in BASE_MODULES
            or target_layer == layer
            or target_layer in set(allowed)
            or (i.imported == "shared.runtime" and any(_under(i.importer, u) for u in RUNTIME_USERS))
        )
        if not ok:
            bad.append(str(i))
    return bad


@pytest.mark.parametrize(("layer", "allowed"), sorted(LAYERS.items()))
def test_layers(layer: str, allowed: tuple[str, ...]) -> None:
    bad = _violations(layer, allowed)
    assert not bad, f"shared/{layer} imports what its layer may not:\n" + "\n".join(bad)


def test_every_layer_is_in_the_rules() -> None:
    # A new subpackage gets its row in docs/architecture.md and here, or nothing checks it.
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").exists()}
    assert packages == {*LAYERS, "ops"}


def test_the_base_modules_import_only_each_other() -> None:
    bad = [
        str(i)
        for i in IMPORTS
        if i.importer in BASE_MODULES and _under(i.imported, "shared") and i.imported not in BASE_MODULES
    ]
    assert not bad, "a base module of shared/ imports a layer:\n" + "\n".join(bad)


def test_only_the_entry_modules_ask_for_the_process_runtime() -> None:
    callers = set()
    for name in sorted(MODULES):
        if not _under(name, "shared") or name == "shared.runtime":
            continue
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "get_runtime" for a in node.names):
                callers.add(name)
    bad = sorted(c for c in callers if not any(_under(c, e) for e in GET_RUNTIME_CALLERS))
    assert not bad, "below the entry modules the runtime is passed in, not fetched: " + ", ".join(bad)


def test_every_exception_of_shared_derives_from_the_one_root() -> None:
    # One root (shared/errors.py) so that a caller answering over HTTP needs one `except`: a class
    # outside it falls through to the generic 500 and cannot say what to do.
    import importlib
    import inspect

    from shared.errors import ServiceError

    outside = []
    for name in sorted(MODULES):
        if not _under(name, "shared"):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, ServiceError)
            ):
                outside.append(f"{name}.{attr} ({module_path(name)})")
    assert not outside, "exceptions not derived from shared.errors.ServiceError:\n" + "\n".join(outside)


# Parameters that hold a client, a gateway or the runtime: typed with the Protocol or class they are
# (shared/sync/gateways.py, shared/runtime.py, the connectors), so mypy checks every call through them.
TYPED_PARAMETERS = {"rt", "runtime", "bc", "dv", "engine", "storage", "client", "gateway", "span"}


def test_no_client_gateway_or_runtime_parameter_is_typed_any() -> None:
    untyped = []
    for name in sorted(MODULES):
        if not _under(name, "shared"):
            continue
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            for arg in args:
                if arg.arg in TYPED_PARAMETERS and (
                    arg.annotation is None or ast.unparse(arg.annotation) == "Any"
                ):
                    untyped.append(f"{module_path(name)}:{arg.lineno} {node.name}({arg.arg})")
    assert not untyped, "parameters typed Any (or not at all):\n" + "\n".join(untyped)


TABLE_OPERATIONS = {
    "get_entity",
    "query_entities",
    "list_entities",
    "create_entity",
    "upsert_entity",
    "update_entity",
    "delete_entity",
    "submit_transaction",
}


def test_only_the_stores_touch_table_rows() -> None:
    # One store per table (or kind of row) in shared/store/: keys, partitions and ETags live there.
    raw = []
    for name in sorted(MODULES):
        if not _under(name, "shared") or _under(name, "shared.store"):
            continue
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in TABLE_OPERATIONS
            ):
                raw.append(f"{module_path(name)}:{node.lineno} .{node.func.attr}()")
    assert not raw, "table rows read or written outside shared/store/:\n" + "\n".join(raw)
