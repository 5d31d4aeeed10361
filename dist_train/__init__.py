"""dist_train: large-batch distributed training that generalizes like small-batch training.

The public Python API (everything else is internal). Names are imported on first use, so ``import dist_train``
stays cheap.

* Runs: :func:`load_config` (a file or recipe name, with ``key=value`` overrides), :class:`Config`,
  :func:`train` (a script run by ``torchrun``, with your own model and data set), :class:`Plan` and
  :func:`make_plan`, :func:`read_run` and :class:`RunRecord`.
* Your data set's answer: :class:`ArraySplits` (in-memory arrays) or :class:`DatasetPair` (map-style datasets).
* Techniques for your own loop: :class:`GhostBatchNorm1d`, :class:`GhostBatchNorm2d`, :func:`convert_to_ghost_bn`;
  :func:`batch_views` (batch augmentation); :func:`average_parameters` (the SWAP average) and :func:`recompute_bn`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "Config": "dist_train.config",
    "load_config": "dist_train.config",
    "train": "dist_train.api",
    "make_plan": "dist_train.api",
    "read_run": "dist_train.api",
    "RunRecord": "dist_train.api",
    "Plan": "dist_train.regime",
    "ArraySplits": "dist_train.data.plugin",
    "DatasetPair": "dist_train.data.plugin",
    "GhostBatchNorm1d": "dist_train.nn.ghost_bn",
    "GhostBatchNorm2d": "dist_train.nn.ghost_bn",
    "convert_to_ghost_bn": "dist_train.nn.ghost_bn",
    "batch_views": "dist_train.data.views",
    "average_parameters": "dist_train.swap",
    "recompute_bn": "dist_train.swap",
}

__all__ = [
    "ArraySplits",
    "Config",
    "DatasetPair",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "Plan",
    "RunRecord",
    "__version__",
    "average_parameters",
    "batch_views",
    "convert_to_ghost_bn",
    "load_config",
    "make_plan",
    "read_run",
    "recompute_bn",
    "train",
]

if TYPE_CHECKING:
    from dist_train.api import RunRecord, make_plan, read_run, train
    from dist_train.config import Config, load_config
    from dist_train.data.plugin import ArraySplits, DatasetPair
    from dist_train.data.views import batch_views
    from dist_train.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_to_ghost_bn
    from dist_train.regime import Plan
    from dist_train.swap import average_parameters, recompute_bn


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'dist_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
