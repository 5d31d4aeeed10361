"""The IDX image sets (MNIST, Fashion-MNIST): their file names, classes, default places, and how to find the files.

A leaf module without torch: ``dist-train plan`` counts a set from its IDX header with these facts alone
(:mod:`dist_train.data.sizes`); :mod:`dist_train.data.mnist` reads the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dist_train.data.catalog import CATALOG

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
PAIRS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSet:
    """One IDX image set: its name in messages, its torchvision class, its classes and where to find it."""

    name: str
    torchvision_class: str
    """``torchvision.datasets`` class that downloads it into ``root/<class>/raw``."""
    class_names: tuple[str, ...]
    default_root: str = ""
    """Where it is installed when ``data.root`` is empty ("" = no default)."""
    install_hint: str = ""
    """How to install it (shown when the files are missing), besides ``data.download=true``."""
    needs_both_pairs: bool = False
    """The set has a real train/test split: a folder with only one pair is an error, not split."""


MNIST = IdxSet("mnist", "MNIST", tuple(str(digit) for digit in range(10)))
FASHION_MNIST = IdxSet(
    "fashion_mnist",
    "FashionMNIST",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    default_root=CATALOG["fashion_mnist"].default_root,
    install_hint="apt-get install -y dataset-fashion-mnist",
    needs_both_pairs=True,
)
IDX_SETS = {s.name: s for s in (MNIST, FASHION_MNIST)}


def locate(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (raw first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
