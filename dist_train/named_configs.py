"""Recipes by name: the YAML configs installed with the package (``--config quickstart``).

The recipes live in the repository's ``configs/``; the package reaches them as ``dist_train/recipes`` (a
link to ``../configs`` in a checkout, the files themselves in a built wheel), so there is one copy of each.
"""

from __future__ import annotations

import re
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """The installed recipes' names (file stems, sorted)."""
    return sorted(path.stem for path in RECIPES.glob("*.yaml")) if RECIPES.is_dir() else []


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(?=\s+[A-Z(]|$)")
"""A full stop ending a sentence (not the one of ``et al.``, ``e.g.``, ``i.e.`` or a decimal)."""


def describe(name: str) -> str:
    """A recipe's first sentence (what it trains), from its leading comment block."""
    lines = []
    for line in (RECIPES / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(" ".join(lines).split())
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def find_config(path: str | Path) -> Path:
    """``path`` when it is a file, else the installed recipe of that name (``quickstart``, ``quickstart.yaml``);
    unchanged when neither exists (reading it then says the file is not found)."""
    given = Path(path)
    if given.is_file() or given.parent != Path("."):
        return given
    recipe = RECIPES / (given.name if given.suffix == ".yaml" else f"{given.name}.yaml")
    return recipe if recipe.is_file() else given
