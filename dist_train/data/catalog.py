"""The built-in data sets, in one table: their names, what they need and how they are normalised.

A leaf module (no torch, no torchvision): the config schema, its validation, ``dist-train plan`` and the
readers all derive from :data:`CATALOG`, so adding a built-in data set is one row here plus its reader.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """How one dataset is augmented and normalised."""

    crop: str
    """Training crop: ``"pad"`` (RandomCrop with 4-pixel padding), ``"resized"``
    (RandomResizedCrop) or ``"none"``."""
    resize_eval: bool
    """Evaluate on Resize(size·256/224) + CenterCrop(size) (images of varying size)."""
    flip: bool
    """Random horizontal flips in training."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    """Padding of the pad-crop."""
    cutout: int = 0
    """Side of the cutout square (0 = none)."""


@dataclass(frozen=True)
class DatasetInfo:
    """One built-in data set."""

    name: str
    """``data.dataset``'s value."""
    title: str
    """Its name in prose (the plan's header)."""
    recipe: Recipe | None
    """Its augmentation and normalisation; None: taken from the data it holds (tar shards: their source's)."""
    in_memory: bool
    """The whole split is decoded into one tensor (the ``tensor`` backend can hold it on the device)."""
    needs_root: bool
    """``data.root`` must name its files."""
    train_size: int = 0
    """The published number of training images (0: the data on disk says)."""
    num_classes: int = 0
    """The published number of classes (0: the data or the config says)."""
    default_root: str = ""
    """Where a system package installs it (``data.root``'s default)."""


_CIFAR = Recipe("pad", False, True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("synthetic", "synthetic", Recipe("pad", False, True, (0.5,) * 3, (0.25,) * 3), True, False),
        DatasetInfo("cifar10", "CIFAR-10", _CIFAR, True, True, 50_000, 10),
        DatasetInfo(
            "cifar100",
            "CIFAR-100",
            Recipe("pad", False, True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            True,
            True,
            50_000,
            100,
        ),
        DatasetInfo("mnist", "MNIST", Recipe("none", False, False, (0.1307,), (0.3081,)), True, True, 60_000, 10),
        DatasetInfo(
            "fashion_mnist",
            "Fashion-MNIST",
            Recipe("none", False, False, (0.2860,), (0.3530,)),
            True,
            True,
            60_000,
            10,
            default_root="/usr/share/datasets/fashion-mnist",
        ),
        DatasetInfo(
            "imagefolder",
            "ImageFolder",
            Recipe("resized", True, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            False,
            True,
        ),
        DatasetInfo("webdataset", "tar shards", None, False, True),
    )
}
"""Every built-in data set by name (``data.dataset`` may also name a factory by import path)."""

DATASETS = tuple(CATALOG)
"""The built-in data sets' names."""
IN_MEMORY = tuple(name for name, info in CATALOG.items() if info.in_memory)
"""Those decoded whole into memory."""
