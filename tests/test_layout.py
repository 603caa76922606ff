"""The layout's rules, read from the sources with :mod:`ast` (nothing is imported).

- The import graph of the modules of ``models/`` and ``stream/`` has no cycle. Every
  ``import`` statement counts, also those inside functions: ``import a.b`` is an edge to
  ``a.b``; ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
  ``a.b``; relative imports are resolved against the importing module's package.
- ``models/`` (the pure learning core) imports nothing from ``stream/`` nor from the
  stream stack (:data:`STREAM_STACK`).
- No module has more than :data:`MAX_LINES` lines, except those in :data:`LONG_MODULES`
  (each with its reason; an entry that is no longer needed fails the test too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "stream")
#: what the core must not import (the Kafka/Faust/Redis side lives in ``stream/``)
STREAM_STACK = frozenset({"stream", "faust", "aiokafka", "redis"})
MAX_LINES = 600
#: modules allowed over :data:`MAX_LINES`, and why
LONG_MODULES: dict[str, str] = {
    "stream.worker.compat": "the one door to dependency internals: every check and fallback "
    "in one module by design, about 95 of its lines Faust's fetch loop copied verbatim",
}


def module_name(path: Path) -> str:
    """``stream/worker/store.py`` -> ``stream.worker.store`` (a package: its name)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_paths() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`, by name."""
    return {
        module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
    }


MODULES = module_paths()


def imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """The absolute module names ``path`` imports (as the rules above resolve them), with
    the line of each statement."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def import_graph() -> dict[str, set[str]]:
    """Edges between the modules of :data:`PACKAGES` (other imports are left out)."""
    return {
        name: {target for target, _ in imports(name, path) if target in MODULES}
        for name, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each as one cycle's path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [cycle_in(graph, component) for component in components]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the component's first module: ``[a, b, ..., a]``."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component: a shortest cycle
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(component)}")  # not a component then


def test_the_modules_are_found() -> None:
    assert {"models", "models.engine", "stream", "stream.cli.main"} <= set(MODULES)
    assert {"stream.worker.store", "stream.ops.metrics", "stream.devservers.servers"} <= set(
        MODULES
    )


def test_imports_are_resolved_to_modules() -> None:
    graph = import_graph()
    # ``from stream.cli.main import main`` / ``from stream.devservers import find_free_port``
    assert "stream.cli.main" in graph["stream.cli"]
    assert "stream.devservers.probes" in graph["stream.devservers"]
    # ``from stream.worker import handover`` (a submodule)
    assert "stream.worker.handover" in graph["stream.worker.app"]
    # an import inside a function: ``customer-ai worker`` imports the Faust app lazily
    assert "stream.worker.app" in graph["stream.cli.main"]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    source = tmp_path / "store.py"
    source.write_text("from . import scorer, nothing\nfrom ..ops.metrics import REGISTRY\n")
    assert [t for t, _ in imports("stream.worker.store", source)] == [
        "stream.worker.scorer",
        "stream.worker",
        "stream.ops.metrics",
    ]


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_cycles_are_detected() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["d", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_does_not_import_the_stream_side() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "models"
        for target, line in imports(name, path)
        if target.split(".")[0] in STREAM_STACK
    ]
    assert not found, "models/ must not depend on the stream side:\n" + "\n".join(found)


def test_no_module_is_too_long() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    too_long = {n: k for n, k in lengths.items() if k > MAX_LINES and n not in LONG_MODULES}
    assert not too_long, (
        f"modules over {MAX_LINES} lines (split them, one concept per module): {too_long}"
    )
    stale = sorted(n for n in LONG_MODULES if lengths.get(n, 0) <= MAX_LINES)
    assert not stale, f"remove from LONG_MODULES (gone or short enough now): {stale}"
