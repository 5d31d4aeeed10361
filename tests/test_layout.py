"""The launch path goes one way: cli/slurm → run → swap → assemble → trainer → data; nothing imports back,
and no module of dist_train imports itself back through others (no import cycle)."""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "dist_train"


def imported(module: str) -> set[str]:
    """The dist_train modules ``module`` imports anywhere in its source (inside functions too)."""
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dist_train"):
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("dist_train")}
    return names


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("dist_train.swap", {"dist_train.run"}),
        ("dist_train.assemble", {"dist_train.run", "dist_train.swap"}),
        ("dist_train.trainer", {"dist_train.run", "dist_train.swap", "dist_train.assemble"}),
        ("dist_train.data.loader", {"dist_train.run", "dist_train.swap", "dist_train.assemble", "dist_train.trainer"}),
        ("dist_train.data.dali", {"dist_train.run", "dist_train.swap", "dist_train.assemble", "dist_train.trainer"}),
    ],
)
def test_nothing_imports_back_up_the_launch_path(module: str, forbidden: set[str]) -> None:
    assert not imported(module) & forbidden, f"{module} imports {sorted(imported(module) & forbidden)}"


def module_name(path: Path) -> str:
    """``dist_train/data/__init__.py`` -> ``dist_train.data``; ``dist_train/cli.py`` -> ``dist_train.cli``."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _home(name: str, modules: Collection[str]) -> str | None:
    """The module that importing ``name`` runs: ``name`` or its nearest parent among ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(source: str, module: str, modules: Collection[str], package: bool = False) -> set[str]:
    """The ``modules`` that ``source`` (the text of ``module``, a package's ``__init__`` if ``package``) imports,
    at any depth; ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg``."""
    anchor = module if package else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {_home(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, or level - 1 packages above it
                parent = anchor.rsplit(".", node.level - 1)[0] if node.level > 1 else anchor
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else _home(base, modules))
    return {name for name in found if name is not None and name != module}


def import_graph() -> dict[str, set[str]]:
    """Each module of dist_train -> the modules of dist_train it imports."""
    return {
        name: imports(path.read_text(), name, MODULES, package=path.name == "__init__.py")
        for name, path in MODULES.items()
    }


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest import path from ``start`` back to ``start`` (both ends named); empty when there is none."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if target not in parent:
                parent[target] = node
                queue.append(target)
    return []


def test_the_import_checker_sees_every_import_but_type_checking_ones() -> None:
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.e"}
    source = """
import os
from typing import TYPE_CHECKING
from pkg import b, thing
from . import c
from .sub.e import name
if TYPE_CHECKING:
    from pkg import d
else:
    import pkg.sub
def late():
    import pkg.d.missing
"""
    assert imports(source, "pkg.a", modules) == {"pkg", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.e"}
    assert imports("from .. import a\nfrom . import e", "pkg.sub", modules, package=True) == {"pkg.a", "pkg.sub.e"}
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert shortest_cycle(graph, "a") == ["a", "b", "a"] and shortest_cycle(graph, "d") == []


def test_no_module_of_dist_train_imports_itself_back() -> None:
    """No import cycle anywhere in dist_train: every import statement counts, inside functions too."""
    graph = import_graph()
    assert "dist_train.failures" in graph["dist_train.cli"]  # the graph is read (a sanity check)
    cycles = {frozenset(cycle): cycle for name in sorted(graph) if (cycle := shortest_cycle(graph, name))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles.values())
