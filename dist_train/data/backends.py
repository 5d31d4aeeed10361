"""The training-loader backends, in one table (``data.backend``).

A leaf module (no torch): validation and ``dist-train plan`` read the table's facts without loading any
loader; the builders are imported when a run builds its loaders. Adding a backend is one loader module
(its builders satisfy :mod:`dist_train.data.contract`) plus one row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dist_train.data.contract import EvalBuilder, TrainBuilder


def _load(path: str) -> Any:
    """The object ``module:attr`` names, importing its module."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Backend:
    """One loader backend and what it supports."""

    name: str
    """``data.backend``'s value."""
    makes_own_views: bool
    """It makes batch augmentation's M views itself (else the data set does)."""
    in_memory_only: bool
    """It holds the whole split in memory (no ImageFolder, no tar shards)."""
    train_loader: str
    """Its training-loader builder (a :data:`~dist_train.data.contract.TrainBuilder`), as ``module:attr``."""
    eval_loader: str
    """Its validation-loader builder (an :data:`~dist_train.data.contract.EvalBuilder`), as ``module:attr``."""
    crops: tuple[str, ...] = ("pad", "resized", "none")
    """The training crops (``data.crop``) it does."""

    def train_builder(self) -> TrainBuilder:
        """The training-loader builder, imported."""
        return _load(self.train_loader)

    def eval_builder(self) -> EvalBuilder:
        """The validation-loader builder, imported."""
        return _load(self.eval_loader)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "torch",
            makes_own_views=False,
            in_memory_only=False,
            train_loader="dist_train.data.loader:train_loader_for",
            eval_loader="dist_train.data.loader:eval_loader_for",
        ),
        Backend(
            "dali",
            makes_own_views=True,
            in_memory_only=False,
            train_loader="dist_train.data.dali:train_loader_for",
            eval_loader="dist_train.data.dali:eval_loader_for",
        ),
        Backend(
            "tensor",
            makes_own_views=True,
            in_memory_only=True,
            train_loader="dist_train.data.tensor_loader:train_loader_for",
            eval_loader="dist_train.data.loader:eval_loader_for",
            crops=("pad", "none"),
        ),
    )
}
"""Every loader backend by name (``auto`` picks one of these when the run starts)."""

UNRESOLVED = "torch"
"""The backend of a config whose ``auto`` was not made concrete (a Trainer built without ``dist-train train``)."""


def backend_for(name: str) -> Backend:
    """The row of ``data.backend: name``; ``auto`` still unresolved is :data:`UNRESOLVED`'s."""
    return BACKENDS[UNRESOLVED if name == "auto" else name]
