"""What every data set's reader answers: its train and validation sets (:class:`DatasetSplits`), and the
seeded training subset of ``data.train_subset`` (:func:`subset_indices`), which every reader takes alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from dist_train.data.catalog import Recipe
from dist_train.errors import ConfigError


@dataclass
class DatasetSplits:
    """Train and validation sets; items are (normalised float32 C×H×W tensor, int label)."""

    train: Dataset
    """Augmented when ``cfg.augment``."""
    val: Dataset
    """Never augmented."""
    num_classes: int
    in_channels: int
    image_size: int
    """Side of the (square) training input."""
    class_names: tuple[str, ...] = ()
    """Name of each label (shown in TensorBoard); empty: the label numbers."""
    recipe: Recipe | None = None
    """Augmentation and normalisation when not the data set's entry of ``RECIPES`` (a factory's data set)."""

    def class_name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)


def subset_indices(length: int, size: int, seed: int) -> torch.Tensor:
    """``size`` distinct indices of ``range(length)``, sorted, from a seeded permutation (all of them if 0)."""
    if size < 0:
        raise ConfigError(f"data.train_subset must be at least 0, got {size}")
    if size == 0 or size >= length:
        return torch.arange(length)
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:size].sort().values
