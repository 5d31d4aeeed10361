"""In-memory uint8 image arrays, the seeded train/validation split, and a Dataset over them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

Transform = Callable[[torch.Tensor], torch.Tensor]


def reason(error: BaseException) -> str:
    """A short one-line description of a low-level exception, for DataError messages."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class ImageArrays:
    """A whole image set in memory."""

    images: torch.Tensor
    """uint8, N×C×H×W."""
    labels: torch.Tensor
    """int64, N."""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageArrays:
        return ImageArrays(self.images[indices].contiguous(), self.labels[indices].contiguous())


def split_indices(length: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint sorted (train, val) index tensors from a seeded random permutation of ``range(length)``.

    The validation share is ``round(length * val_fraction)``, kept below ``length`` so that the
    training part is never empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(round(length * val_fraction), max(length - 1, 0))
    perm = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def split(arrays: ImageArrays, val_fraction: float, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """Split ``arrays`` into (train, val) deterministically from ``seed``."""
    train_idx, val_idx = split_indices(len(arrays), val_fraction, seed)
    return arrays.subset(train_idx), arrays.subset(val_idx)


class TensorImageDataset(Dataset):
    """Items ``(transform(image), label)`` from an :class:`ImageArrays`."""

    def __init__(self, arrays: ImageArrays, transform: Transform | None = None, classes: Sequence[str] = ()) -> None:
        self.arrays = arrays
        self.transform = transform
        self.classes = tuple(classes)
        """Name of each label (torchvision's ``classes``); empty: unnamed."""

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.arrays.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.arrays.labels[index])
