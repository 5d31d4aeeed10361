"""MNIST from IDX files (gzip or raw), parsed here; optionally downloaded by torchvision."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from dist_train.data.arrays import ImageArrays, reason
from dist_train.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
PAIRS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _locate(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (raw first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file whose magic number must be ``magic``."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"mnist: cannot read {path}: truncated or corrupt ({reason(e)})") from None
    if len(raw) < 4:
        raise DataError(f"mnist: {path} is truncated: {len(raw)} bytes, no IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"mnist: {path} has magic number {found}, expected {magic} (not an MNIST IDX file?)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"mnist: {path} is truncated: {len(raw)} bytes, header needs {header}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"mnist: {path} {problem}: {len(raw)} bytes, shape {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_pair(images_path: Path, labels_path: Path) -> ImageArrays:
    """One images/labels pair as 1×H×W uint8 images and int64 labels 0..9."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"mnist: {images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"mnist: {labels_path} has labels outside 0..9 (max {labels.max()})")
    return ImageArrays(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _find_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The complete pairs in ``folder``; a half pair is an error."""
    pairs = {}
    for split_name, (images_name, labels_name) in PAIRS.items():
        images, labels = _locate(folder, images_name), _locate(folder, labels_name)
        if images and labels:
            pairs[split_name] = (images, labels)
        elif images or labels:
            missing = labels_name if images else images_name
            raise DataError(f"mnist: missing file {folder / missing}[.gz] (its partner is there)")
    return pairs


def _download(root: Path) -> None:
    from torchvision import datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        datasets.MNIST(str(root), train=True, download=True)
        datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # network, disk and archive errors all end up here
        raise DataError(f"mnist: download into {root} failed: {reason(e)}") from None


def load_mnist(root: str | Path, download: bool = False) -> tuple[ImageArrays, ImageArrays | None]:
    """(train, test) from ``root`` or ``root/MNIST/raw``; test is None when only one pair exists.

    The single pair (train or t10k) is then returned as ``train``, for the caller to split.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"mnist: {root} is not a directory")
    folders = [root, root / "MNIST" / "raw"]
    pairs: dict[str, tuple[Path, Path]] = {}
    for folder in folders:
        pairs = _find_pairs(folder) if folder.is_dir() else {}
        if pairs:
            break
    if not pairs and download:
        _download(root)
        pairs = _find_pairs(folders[1])
    if not pairs:
        if not root.is_dir():
            raise DataError(f"mnist: directory not found: {root} (set data.download=true to fetch it)")
        names = ", ".join(n for pair in PAIRS.values() for n in pair)
        raise DataError(f"mnist: no IDX files ({names}, raw or .gz) in {root} or {folders[1]}")
    if len(pairs) == 2:
        return read_pair(*pairs["train"]), read_pair(*pairs["t10k"])
    return read_pair(*next(iter(pairs.values()))), None
