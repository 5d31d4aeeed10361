"""Your own data set, by import path: ``data.dataset: examples/own_data/data.py:arrays`` (or ``:folders``).

dist_train calls the factory with ``data.kwargs`` and takes one of two answers:

* ``arrays``: a dict of uint8 image arrays and integer labels (the fields of ``dist_train.ArraySplits``);
  every loader backend (torch, dali, tensor) and the standard augmentations apply.
* ``folders``: a ``(train, val)`` pair of map-style datasets of ``(image, label)`` items (here PIL images);
  the torch and dali backends apply.

The images: a bright 4×4 patch on a dark background, placed by the class (one of 4 places), plus noise.
"""

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

CLASSES = ("top-left", "top-right", "bottom-left", "bottom-right")


def _images(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size) uint8 images and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    images = rng.integers(0, 80, (count, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        top, left = (label // 2) * size // 2 + 2, (label % 2) * size // 2 + 2
        images[i, top : top + 4, left : left + 4] = 255
    return images, labels


def arrays(train_size: int = 512, val_size: int = 128, size: int = 16) -> dict:
    """Answer 1: both splits in memory, (N, H, W) uint8 (one channel)."""
    train_images, train_labels = _images(train_size, size, seed=0)
    val_images, val_labels = _images(val_size, size, seed=1)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "val_images": val_images,
        "val_labels": val_labels,
        "classes": CLASSES,
    }


class Patches(Dataset):
    """A map-style dataset: item i is (a PIL image, its label)."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.images, self.labels = _images(count, size, seed)
        self.classes = CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])


def folders(train_size: int = 512, val_size: int = 128, size: int = 16) -> tuple[Dataset, Dataset]:
    """Answer 2: map-style train and validation datasets."""
    return Patches(train_size, size, seed=0), Patches(val_size, size, seed=1)
