"""Dataset readers, transforms and distributed loaders.

Names are imported from their modules on first use, so that importing a light module of this package
(``dist_train.data.catalog``, ``dist_train.data.backends``) loads neither torch nor torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "DatasetSplits": "dist_train.data.splits",
    "ImageArrays": "dist_train.data.arrays",
    "TensorImageDataset": "dist_train.data.arrays",
    "build_datasets": "dist_train.data.datasets",
    "split": "dist_train.data.arrays",
}

__all__ = ["DatasetSplits", "ImageArrays", "TensorImageDataset", "build_datasets", "split"]

if TYPE_CHECKING:
    from dist_train.data.arrays import ImageArrays, TensorImageDataset, split
    from dist_train.data.datasets import build_datasets
    from dist_train.data.splits import DatasetSplits


def __getattr__(name: str) -> Any:
    """Import a name of ``__all__`` from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'dist_train.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
