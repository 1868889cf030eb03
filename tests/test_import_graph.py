"""The import graph of ``core/``, ``server/`` and ``client/``: no cycles, and the layers' arrows.

Every ``import`` statement counts, at module level or inside a function (a lazy import still
ties the two modules together) or under ``if TYPE_CHECKING:`` (a type names a dependency too),
relative imports resolved. ``from pkg import name`` is an
arrow to the submodule ``pkg.name`` when that is a module, else to ``pkg``. Importing
``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit arrows are left out
(as import linters do): a package's ``__init__`` that re-exports its submodules would
otherwise make every submodule that imports a sibling part of a cycle.

The arrows (README "Layout", DESIGN.md): ``core`` imports neither ``server``, ``client`` nor
``flwr``; ``client`` never imports ``server`` and ``server`` never ``client`` (the simulation
names the ClientApp by its component string); the ServerApp package ``server.app`` never
imports the tooling around it, ``server.cli``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "fedvlp.core", "server": "fedvlp.server", "client": "fedvlp.client"}

# Known cycles that are being removed, each as the set of modules it may run through: a group of
# modules importing each other (a strongly connected component) is tolerated when it lies inside
# one entry. The test fails on an entry that no longer meets a cycle: remove it then.
# (importer prefix, forbidden imported prefix, why)
FORBIDDEN = [
    ("fedvlp.core", "fedvlp.server", "core never imports the server"),
    ("fedvlp.core", "fedvlp.client", "core never imports the client"),
    ("fedvlp.core", "flwr", "core never imports Flower"),
    ("fedvlp.client", "fedvlp.server", "the client never imports the server"),
    (
        "fedvlp.server",
        "fedvlp.client",
        "the server never imports the client (it names the ClientApp by its component string)",
    ),
    ("fedvlp.server.app", "fedvlp.server.cli", "the ServerApp never imports the CLI and tooling around it"),
]


def module_files() -> dict[str, Path]:
    """Module name -> source file, for every ``.py`` file of the three packages."""
    out: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(module: str, path: Path) -> Iterator[tuple[str, str | None]]:
    """``(absolute module, imported name or None)`` of every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the package a relative import starts from: the module's own for __init__
                base = module.split(".") if _is_package(path) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


@functools.cache
def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The arrows between our modules, and every imported absolute module name per module."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    imports: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        for target, name in imported_names(module, path):
            full = f"{target}.{name}" if name else target
            resolved = full if full in files else target
            imports[module].add(resolved)
            # the longest prefix that is one of our modules (``import a.b.c`` runs a.b.c)
            parts = resolved.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            if parts and ".".join(parts) != module:
                graph[module].add(".".join(parts))
    return graph, imports


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of two or more modules: the groups that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph has a few hundred nodes
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected component of two or more."""
    return [closed_path(graph, component) for component in components(graph)]


def closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def test_the_graph_sees_every_module_and_lazy_imports() -> None:
    graph, _ = import_graph()
    assert {"fedvlp.core.params", "fedvlp.server.app", "fedvlp.server.cli", "fedvlp.client.app"} <= set(graph)
    # a function-level relative import (the round loop's SecAgg+ path) is an arrow too
    assert "fedvlp.server.app.secagg" in graph["fedvlp.server.app.rounds"]


def test_cycles_reports_a_closed_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph, _ = import_graph()
    found = components(graph)
    described = [
        " -> ".join(closed_path(graph, group)) + f"\n    (modules importing each other: {', '.join(sorted(group))})"
        for group in found
    ]
    assert not described, "import cycles:\n" + "\n".join(described)


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN)
def test_layer_arrows(importer: str, imported: str, why: str) -> None:
    _, imports = import_graph()

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in imports.items()
        if within(module, importer)
        for target in targets
        if within(target, imported)
    )
    assert not wrong, f"{why}:\n" + "\n".join(wrong)
