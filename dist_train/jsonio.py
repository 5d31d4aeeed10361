"""Strict JSON for everything a run writes (``metrics.jsonl``, ``summary.json``).

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which strict readers
(``jq``, JavaScript, most JSON libraries) reject. A diverged run has such numbers,
so they are written as ``null`` instead; the run's ``diverged`` flag says why.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (non-finite floats as null)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
