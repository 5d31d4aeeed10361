"""``build_datasets``: the configured dataset as train/val torch Datasets plus its shape."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from dist_train.config import DataConfig
from dist_train.data.arrays import ImageArrays, TensorImageDataset, split
from dist_train.data.cifar import LAYOUTS, load_cifar
from dist_train.data.imagefolder import ImageFileDataset, load_imagefolder
from dist_train.data.mnist import load_mnist
from dist_train.data.synthetic import make_synthetic
from dist_train.data.transforms import build_transform
from dist_train.errors import ConfigError, DataError

DATASETS = ("synthetic", "cifar10", "cifar100", "mnist", "imagefolder")


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


def _from_arrays(cfg: DataConfig, train: ImageArrays, val: ImageArrays, num_classes: int) -> DatasetSplits:
    _, channels, height, width = train.images.shape
    if height != width:
        raise DataError(f"{cfg.dataset}: images in {cfg.root} are {height}×{width}, expected square images")
    train_tf = build_transform(cfg.dataset, height, train=True, augment=cfg.augment)
    val_tf = build_transform(cfg.dataset, height, train=False)
    return DatasetSplits(
        TensorImageDataset(train, train_tf), TensorImageDataset(val, val_tf), num_classes, channels, height
    )


def build_datasets(cfg: DataConfig) -> DatasetSplits:
    """Read (or generate) ``cfg.dataset`` and wrap it with its transforms."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
    if cfg.dataset == "synthetic":
        train, val = make_synthetic(cfg)
        return _from_arrays(cfg, train, val, cfg.synthetic_classes)
    if not cfg.root:
        raise ConfigError(f"data.root is required for data.dataset={cfg.dataset}")
    if cfg.dataset in LAYOUTS:
        train, val, classes = load_cifar(cfg.dataset, cfg.root, cfg.download)
        return _from_arrays(cfg, train, val, classes)
    if cfg.dataset == "mnist":
        train, test = load_mnist(cfg.root, cfg.download)
        if test is None:
            train, test = split(train, cfg.val_fraction, cfg.split_seed)
        return _from_arrays(cfg, train, test, 10)
    size = cfg.image_size or 224
    train_files, val_files, classes = load_imagefolder(cfg.root, cfg.val_fraction, cfg.split_seed)
    return DatasetSplits(
        ImageFileDataset(train_files, build_transform("imagefolder", size, train=True, augment=cfg.augment)),
        ImageFileDataset(val_files, build_transform("imagefolder", size, train=False)),
        len(classes),
        3,
        size,
    )
