"""Bounded YAML reading: UTF-8 text of a limited size, no key given twice, a limited number of values.

Config, sweep and run files all come through :func:`read_yaml_mapping`; each refusal is one ConfigError
line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dist_train.errors import ConfigError, DistTrainError

MAX_FILE_BYTES = 1 << 20
"""The largest config or sweep file read (a real one is a few kB)."""
MAX_VALUES = 100_000
"""The most values (mapping entries and list items, aliases expanded) a YAML file may hold."""


def read_text(path: Path, error: type[DistTrainError] = ConfigError, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path`` (at most ``limit`` bytes), else one ``error`` line naming the file."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (YAML itself lets the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_size(loaded: Any, path: Path) -> None:
    """Refuse more than ``MAX_VALUES`` values, counting each alias as the copy it stands for (an alias bomb
    expands exponentially)."""
    stack, count = [loaded], 0
    while stack:
        value = stack.pop()
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        count += len(items)
        if count > MAX_VALUES:
            raise ConfigError(f"{path}: more than {MAX_VALUES} values (aliases expanded); refused")
        stack.extend(items)


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """The top-level mapping of the ``kind`` file ``path`` (empty file: {}); else a one-line ConfigError
    (``expected`` says what the top level should be). Bounded: UTF-8, at most ``MAX_FILE_BYTES`` and
    ``MAX_VALUES`` values, no key twice."""
    if path.is_dir():
        raise ConfigError(f"{kind} file expected, {path} is a directory")
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    text = read_text(path)
    try:
        loaded = yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except ConfigError as e:
        raise ConfigError(str(e).replace("<unicode string>", str(path), 1)) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {expected}")
    _check_size(loaded, path)
    return loaded
