"""``build_datasets``: the configured dataset as train/val torch Datasets plus its shape."""

from __future__ import annotations

from dist_train.config import DataConfig
from dist_train.data.arrays import ImageArrays, TensorImageDataset, Transform, split
from dist_train.data.catalog import DATASETS
from dist_train.data.cifar import LAYOUTS, load_cifar
from dist_train.data.idx_sets import IDX_SETS
from dist_train.data.imagefolder import ImageFileDataset, load_imagefolder
from dist_train.data.mnist import load_mnist
from dist_train.data.plugin import factory_splits
from dist_train.data.shards import load_shards
from dist_train.data.splits import DatasetSplits, subset_indices
from dist_train.data.synthetic import make_synthetic
from dist_train.data.transforms import build_transform, recipe_for, recipe_name
from dist_train.data.views import ManyViews
from dist_train.errors import ConfigError, DataError
from dist_train.plugins import is_import_path

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _transforms(cfg: DataConfig, size: int, copies: int) -> tuple[Transform, Transform]:
    """Training transform (``copies`` views of each image when > 1) and evaluation transform."""
    recipe = recipe_for(cfg)
    name = recipe_name(cfg)
    train = build_transform(name, size, train=True, augment=cfg.augment, recipe=recipe)
    return (ManyViews(train, copies) if copies > 1 else train), build_transform(name, size, train=False)


def _from_arrays(
    cfg: DataConfig,
    train: ImageArrays,
    val: ImageArrays,
    num_classes: int,
    copies: int,
    class_names: tuple[str, ...] = (),
) -> DatasetSplits:
    _, channels, height, width = train.images.shape
    if height != width:
        raise DataError(f"{cfg.dataset}: images in {cfg.root} are {height}×{width}, expected square images")
    if cfg.train_subset:
        train = train.subset(subset_indices(len(train), cfg.train_subset, cfg.split_seed))
    train_tf, val_tf = _transforms(cfg, height, copies)
    return DatasetSplits(
        TensorImageDataset(train, train_tf, class_names),
        TensorImageDataset(val, val_tf, class_names),
        num_classes,
        channels,
        height,
        class_names,
    )


def build_datasets(cfg: DataConfig, copies: int = 1) -> DatasetSplits:
    """Read (or generate) ``cfg.dataset`` and wrap it with its transforms (``copies`` training views)."""
    if is_import_path(cfg.dataset):
        return factory_splits(cfg, copies)
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
    if cfg.dataset == "synthetic":
        train, val = make_synthetic(cfg)
        return _from_arrays(cfg, train, val, cfg.synthetic_classes, copies)
    if not cfg.root:
        raise ConfigError(f"data.root is required for data.dataset={cfg.dataset}")
    if cfg.dataset in LAYOUTS:
        train, val, classes = load_cifar(cfg.dataset, cfg.root, cfg.download)
        return _from_arrays(cfg, train, val, classes, copies, CIFAR10_CLASSES if classes == 10 else ())
    if cfg.dataset in IDX_SETS:
        idx = IDX_SETS[cfg.dataset]
        train, test = load_mnist(cfg.root, cfg.download, idx)
        if test is None:  # MNIST given one pair only: hold out part of it
            train, test = split(train, cfg.val_fraction, cfg.split_seed)
        return _from_arrays(cfg, train, test, len(idx.class_names), copies, idx.class_names)
    if cfg.dataset == "webdataset":
        return _from_shards(cfg, copies)
    size = cfg.image_size or 224
    train_files, val_files, classes = load_imagefolder(cfg.root, cfg.val_fraction, cfg.split_seed)
    if cfg.train_subset:
        train_files = [train_files[i] for i in subset_indices(len(train_files), cfg.train_subset, cfg.split_seed)]
    train_tf, val_tf = _transforms(cfg, size, copies)
    return DatasetSplits(
        ImageFileDataset(train_files, train_tf, classes),
        ImageFileDataset(val_files, val_tf, classes),
        len(classes),
        3,
        size,
        tuple(classes),
    )


def _from_shards(cfg: DataConfig, copies: int) -> DatasetSplits:
    """The tar shards of ``dist-train shard`` in ``cfg.root`` (see :mod:`dist_train.data.shards`)."""
    train, val = load_shards(cfg.root, cfg.train_subset, cfg.split_seed)
    size = train.reader.image_size or cfg.image_size or 224
    train.transform, val.transform = _transforms(cfg, size, copies)
    return DatasetSplits(train, val, len(train.classes), train.channels, size, train.classes)
