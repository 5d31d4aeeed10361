"""ImageNet-layout trees: ``root/train/<class>/*.jpg|jpeg|png`` and optionally ``root/val/<class>/...``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dist_train.data.arrays import Transform, reason, split_indices
from dist_train.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png")
Samples = list[tuple[str, int]]


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one file to a uint8 3×H×W RGB tensor; DataError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"imagefolder: cannot decode image {path}: {reason(e)}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(class_dir: Path) -> list[Path]:
    files = sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"imagefolder: class folder {class_dir} has no {'/'.join(EXTENSIONS)} images")
    return files


def scan(split_dir: Path, class_index: dict[str, int] | None = None) -> tuple[Samples, list[str]]:
    """(path, label) pairs under ``split_dir`` and its sorted class names.

    With ``class_index`` (the training classes), every class folder must be one of them.
    """
    if not split_dir.is_dir():
        raise DataError(f"imagefolder: directory not found: {split_dir}")
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise DataError(f"imagefolder: no class folders in {split_dir}")
    names = [d.name for d in dirs]
    if class_index is None:
        class_index = {name: i for i, name in enumerate(names)}
    unknown = [name for name in names if name not in class_index]
    if unknown:
        raise DataError(f"imagefolder: {split_dir} has classes not in train/: {', '.join(unknown[:5])}")
    samples = [(str(path), class_index[d.name]) for d in dirs for path in _images(d)]
    return samples, names


class ImageFileDataset(Dataset):
    """Items ``(transform(image), label)``, decoding each file when it is loaded."""

    def __init__(self, samples: Samples, transform: Transform | None = None, classes: Sequence[str] = ()) -> None:
        self.samples = samples
        self.transform = transform
        self.classes = tuple(classes)
        """Name of each label (the class folders)."""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def load_imagefolder(root: str | Path, val_fraction: float, seed: int) -> tuple[Samples, Samples, list[str]]:
    """(train samples, val samples, class names); without ``val/`` the training files are split."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: directory not found: {root}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: {root} has no train/ folder (expected train/<class>/*.jpg)")
    train, classes = scan(train_dir)
    val_dir = root / "val"
    if val_dir.is_dir():
        val, _ = scan(val_dir, {name: i for i, name in enumerate(classes)})
        return train, val, classes
    train_idx, val_idx = split_indices(len(train), val_fraction, seed)
    return [train[i] for i in train_idx.tolist()], [train[i] for i in val_idx.tolist()], classes
