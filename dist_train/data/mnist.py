"""MNIST and Fashion-MNIST from IDX files (gzip or raw), parsed here; optionally downloaded by torchvision.

Both sets share the format and the file names (``train-images-idx3-ubyte[.gz]``, ...); the
:class:`IdxSet` of each says where it lives by default, what its classes are called and how to
get it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from dist_train.data.arrays import ImageArrays, reason
from dist_train.data.idx_sets import IMAGES_MAGIC, LABELS_MAGIC, MNIST, PAIRS, IdxSet, locate
from dist_train.errors import DataError


def read_idx(path: Path, magic: int, name: str = "mnist") -> np.ndarray:
    """The uint8 array of an IDX file whose magic number must be ``magic`` (``name`` prefixes errors)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: cannot read {path}: truncated or corrupt ({reason(e)})") from None
    if len(raw) < 4:
        raise DataError(f"{name}: {path} is truncated: {len(raw)} bytes, no IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{name}: {path} has magic number {found}, expected {magic} (not an IDX file of this kind?)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: {path} is truncated: {len(raw)} bytes, header needs {header}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{name}: {path} {problem}: {len(raw)} bytes, shape {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_pair(images_path: Path, labels_path: Path, name: str = "mnist") -> ImageArrays:
    """One images/labels pair as 1×H×W uint8 images and int64 labels 0..9."""
    images = read_idx(images_path, IMAGES_MAGIC, name)
    labels = read_idx(labels_path, LABELS_MAGIC, name)
    if len(images) != len(labels):
        raise DataError(
            f"{name}: {images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{name}: {labels_path} has labels outside 0..9 (max {labels.max()})")
    return ImageArrays(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _find_pairs(folder: Path, name: str) -> dict[str, tuple[Path, Path]]:
    """The complete pairs in ``folder``; a half pair is an error."""
    pairs = {}
    for split_name, (images_name, labels_name) in PAIRS.items():
        images, labels = locate(folder, images_name), locate(folder, labels_name)
        if images and labels:
            pairs[split_name] = (images, labels)
        elif images or labels:
            missing = labels_name if images else images_name
            raise DataError(f"{name}: missing file {folder / missing}[.gz] (its partner is there)")
    return pairs


def _download(root: Path, idx: IdxSet) -> None:
    from torchvision import datasets

    cls = getattr(datasets, idx.torchvision_class)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # network, disk and archive errors all end up here
        raise DataError(f"{idx.name}: download into {root} failed: {reason(e)}") from None


def _how_to_get(idx: IdxSet) -> str:
    """The ways to get the files, for a message about missing ones."""
    if idx.install_hint:
        return f"install it: {idx.install_hint}; or set data.download=true"
    return "set data.download=true to fetch it"


def load_mnist(root: str | Path, download: bool = False, idx: IdxSet = MNIST) -> tuple[ImageArrays, ImageArrays | None]:
    """(train, test) of the IDX set ``idx`` from ``root`` or ``root/<torchvision class>/raw``.

    ``test`` is None when only one pair exists (MNIST): that pair (train or t10k) is then returned as
    ``train``, for the caller to split. A set with a real split (``idx.needs_both_pairs``, Fashion-MNIST)
    needs both pairs. Missing files are one line naming the path and how to get them.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{idx.name}: {root} is not a directory")
    folders = [root, root / idx.torchvision_class / "raw"]
    pairs: dict[str, tuple[Path, Path]] = {}
    for folder in folders:
        pairs = _find_pairs(folder, idx.name) if folder.is_dir() else {}
        if pairs:
            break
    wanted = len(PAIRS) if idx.needs_both_pairs else 1
    if len(pairs) < wanted and download:
        _download(root, idx)
        pairs = _find_pairs(folders[1], idx.name)
    if not pairs:
        if not root.is_dir():
            raise DataError(f"{idx.name}: directory not found: {root} ({_how_to_get(idx)})")
        names = ", ".join(n for pair in PAIRS.values() for n in pair)
        raise DataError(
            f"{idx.name}: no IDX files ({names}, raw or .gz) in {root} or {folders[1]} ({_how_to_get(idx)})"
        )
    if len(pairs) < wanted:
        missing = next(split_name for split_name in PAIRS if split_name not in pairs)
        names = " and ".join(f"{n}[.gz]" for n in PAIRS[missing])
        raise DataError(f"{idx.name}: {root} has no {missing} pair ({names}) ({_how_to_get(idx)})")
    if len(pairs) == 2:
        return read_pair(*pairs["train"], idx.name), read_pair(*pairs["t10k"], idx.name)
    return read_pair(*next(iter(pairs.values())), idx.name), None
