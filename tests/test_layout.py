"""The launch path goes one way: cli/slurm → run → swap → assemble → trainer → data; nothing imports back."""

from __future__ import annotations

import ast

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
