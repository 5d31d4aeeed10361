"""How many training samples a config trains on, without loading the data set.

``dist-train plan`` needs only this number. It comes from, in order: an explicit count
(``--train-size``); the config itself (synthetic sets); the data on disk when ``data.root`` is
there, reading only what counts it (the IDX headers of MNIST-style sets, the file list of an
ImageFolder tree, the manifest of tar shards; no image is decoded); the published size of a standard set (CIFAR, MNIST,
Fashion-MNIST) when its files are not here. ``data.train_subset`` and the held-out split of sets
without a test split apply as in training.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from dist_train.config import DataConfig
from dist_train.data.catalog import CATALOG
from dist_train.data.idx_sets import IDX_SETS, PAIRS, locate
from dist_train.errors import DataError
from dist_train.plugins import is_import_path

STANDARD_TRAIN_SIZES = {name: (info.train_size, info.title) for name, info in CATALOG.items() if info.train_size}
"""Training images of the published sets (CIFAR's pickles have no header to read them from), and their names."""


@dataclass(frozen=True)
class TrainSize:
    count: int
    source: str
    """Where the count comes from, for the plan's header."""


def idx_count(path: Path) -> int:
    """The number of items in an IDX file, from its 8-byte header only (raw or gzip)."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            header = f.read(8)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read the IDX header of {path}: {e}") from None
    if len(header) < 8 or int.from_bytes(header[:4], "big") >> 8 != 0x08:
        raise DataError(f"{path} is not an IDX file (no IDX header)")
    return int.from_bytes(header[4:8], "big")


def _held_out(length: int, val_fraction: float) -> int:
    """The training part of ``length`` samples once ``val_fraction`` is held out (as ``split_indices``)."""
    return length - min(round(length * val_fraction), max(length - 1, 0))


def _idx_size(cfg: DataConfig) -> TrainSize | None:
    idx = IDX_SETS[cfg.dataset]
    root = Path(cfg.root or idx.default_root).expanduser()
    for folder in (root, root / idx.torchvision_class / "raw"):
        found = {split: locate(folder, PAIRS[split][0]) for split in PAIRS} if folder.is_dir() else {}
        found = {split: path for split, path in found.items() if path is not None}
        if "train" in found and "t10k" in found:
            return TrainSize(idx_count(found["train"]), f"counted from the IDX header in {folder}")
        if found and not idx.needs_both_pairs:  # one pair: training holds out data.val_fraction of it
            path = next(iter(found.values()))
            count = _held_out(idx_count(path), cfg.val_fraction)
            return TrainSize(count, f"counted from the IDX header in {folder}, less data.val_fraction")
    return None


def train_size(cfg: DataConfig, given: int = 0) -> TrainSize:
    """The training set size of ``cfg`` (``given`` > 0 wins); a DataError when nothing tells it."""
    if given:
        size = TrainSize(given, "given with --train-size")
    elif is_import_path(cfg.dataset):
        from dist_train.data.plugin import train_count

        size = TrainSize(train_count(cfg), f"counted by calling the factory {cfg.dataset}")
    elif cfg.dataset == "synthetic":
        size = TrainSize(cfg.synthetic_train_size, "data.synthetic_train_size")
    elif cfg.dataset in IDX_SETS and (found := _idx_size(cfg)) is not None:
        size = found
    elif cfg.dataset == "webdataset":
        from dist_train.data.shards import read_manifest

        count = read_manifest(cfg.root)["splits"]["train"]["samples"]
        size = TrainSize(count, f"the manifest of the shards in {cfg.root}")
    elif cfg.dataset == "imagefolder" and cfg.root and Path(cfg.root).expanduser().is_dir():
        from dist_train.data.imagefolder import load_imagefolder  # the file list only; torch with it

        train, _, _ = load_imagefolder(cfg.root, cfg.val_fraction, cfg.split_seed)
        size = TrainSize(len(train), f"counted from the file list of {cfg.root}")
    elif cfg.dataset in STANDARD_TRAIN_SIZES:
        count, name = STANDARD_TRAIN_SIZES[cfg.dataset]
        size = TrainSize(count, f"the published size of the {name} training set")
    else:
        where = f"data.root={cfg.root} is not a directory" if cfg.root else "data.root is not set"
        raise DataError(
            f"{cfg.dataset}: cannot tell the training set size ({where}): give it with --train-size N "
            "(ImageNet-1k: 1281167)"
        )
    if cfg.train_subset and not given:
        size = TrainSize(min(cfg.train_subset, size.count), f"data.train_subset of {size.source}")
    return size
