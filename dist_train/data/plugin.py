"""A data set from the user's factory (``data.dataset: my_pkg.data:build`` or ``data.py:build``).

The factory is called as ``factory(**data.kwargs)`` and answers in one of two shapes:

* :class:`ArraySplits` (or a dict with its fields): whole splits in memory as uint8 image arrays (numpy or
  torch; (N, C, H, W), (N, H, W, C) with C = 1 or 3, or (N, H, W); square images) and integer labels. All three
  loader backends (``torch``, ``dali``, ``tensor``) and the standard augmentations (``data.crop`` pad,
  ``data.flip``, ``data.cutout``, batch augmentation) apply.
* :class:`DatasetPair` (or a ``(train, val)`` tuple): map-style datasets whose items are ``(image, label)``,
  the image a PIL image or a uint8 array/tensor as above. The ``torch`` and ``dali`` backends apply. Images
  are used at their size (all square and equal), or with ``data.image_size`` set, like an ImageFolder:
  random-resized crops for training, resize and centre crop for validation.

Labels are 0 .. num_classes - 1. ``num_classes`` comes from the answer, else ``len(classes)``, else (arrays)
the largest label + 1 or (datasets) the training dataset's ``classes``. Class names are optional (TensorBoard's
views grid shows them). Normalisation uses the answer's ``mean``/``std`` (per channel, in [0, 1] units), else
the training images' own (arrays) or 0.5/0.25 (datasets). Crop and flip are off unless ``data.crop``/``data.flip``
turn them on. Every inconsistency is one :class:`ConfigError` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from dist_train.config import DataConfig
from dist_train.data.arrays import ImageArrays, TensorImageDataset, Transform
from dist_train.data.catalog import Recipe
from dist_train.data.splits import DatasetSplits, subset_indices
from dist_train.data.transforms import build_transform
from dist_train.data.views import ManyViews
from dist_train.errors import ConfigError
from dist_train.plugins import GIVEN, call_factory, load_factory

KEY = "data.dataset"


@dataclass
class ArraySplits:
    """Answer 1: both splits in memory."""

    train_images: Any
    """uint8 (N, C, H, W), (N, H, W, C) with C = 1 or 3, or (N, H, W); numpy or torch."""
    train_labels: Any
    """Integer labels, (N,)."""
    val_images: Any
    val_labels: Any
    classes: Sequence[str] = ()
    """Optional class names, one per label."""
    num_classes: int = 0
    """0: ``len(classes)``, else the largest label + 1."""
    mean: Sequence[float] | None = None
    """Per-channel mean in [0, 1] units; None: the training images'."""
    std: Sequence[float] | None = None


@dataclass
class DatasetPair:
    """Answer 2: map-style train and validation datasets of ``(image, label)`` items."""

    train: Dataset
    val: Dataset
    classes: Sequence[str] = ()
    num_classes: int = 0
    """0: ``len(classes)``, else ``train.classes``."""
    mean: Sequence[float] | None = None
    """Per-channel mean in [0, 1] units; None: 0.5."""
    std: Sequence[float] | None = None
    """None: 0.25."""


@dataclass
class Loaded:
    """A factory's answer, checked: what :func:`~dist_train.data.datasets.build_datasets` wraps."""

    answer: ArraySplits | DatasetPair
    num_classes: int
    channels: int
    side: int
    """Side of the (square) images; 0 when ``data.image_size`` resizes them."""
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _fail(label: str, message: str) -> ConfigError:
    return ConfigError(f"{label}: {message}")


def answer_of(cfg: DataConfig) -> ArraySplits | DatasetPair:
    """Call the factory (or take the object handed over) and recognise its answer's shape."""
    label = f"{KEY}={cfg.dataset}"
    factory = load_factory(cfg.dataset, KEY)
    given_answer = cfg.dataset.startswith(GIVEN) and not callable(factory)
    answer = factory if given_answer else call_factory(factory, cfg.dataset, KEY, **cfg.kwargs)
    if isinstance(answer, ArraySplits | DatasetPair):
        return answer
    if isinstance(answer, dict):
        known = {f.name for f in fields(ArraySplits)}
        unknown = sorted(set(answer) - known)
        required = (f.name for f in fields(ArraySplits) if f.name.endswith(("_images", "_labels")))
        missing = sorted(name for name in required if name not in answer)
        if unknown or missing:
            problem = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
            raise _fail(label, f"the factory's dict has {problem}; expected the fields of ArraySplits")
        return ArraySplits(**answer)
    if isinstance(answer, tuple) and len(answer) == 2 and all(isinstance(d, Dataset) for d in answer):
        return DatasetPair(*answer)
    raise _fail(
        label,
        f"the factory returned {type(answer).__name__}; expected ArraySplits (or a dict of its fields) "
        "or DatasetPair (or a (train, val) tuple of Datasets)",
    )


def _uint8_chw(value: Any, what: str, label: str, batch: bool) -> torch.Tensor:
    """``value`` as a uint8 tensor (N,)C×H×W: from numpy/torch (channels first or last, or no channel axis) or PIL."""
    if isinstance(value, Image.Image):
        value = np.array(value if value.mode in ("L", "RGB") else value.convert("RGB"))
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise _fail(label, f"{what} is a {type(value).__name__}; expected a uint8 array, tensor or PIL image")
    if value.dtype != torch.uint8:
        raise _fail(label, f"{what} has dtype {value.dtype}; expected uint8 (0-255)")
    dims = value.dim() - batch
    if dims == 2:
        value = value.unsqueeze(int(batch))
    elif dims != 3:
        raise _fail(label, f"{what} has shape {tuple(value.shape)}; expected {'N, ' * batch}C, H, W or H, W, C")
    elif value.shape[-1] in (1, 3) and value.shape[-3] not in (1, 3):  # channels last
        value = value.movedim(-1, -3)
    return value.contiguous()


def _labels(value: Any, what: str, count: int, label: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise _fail(label, f"{what} must be 1-D integers, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) != count:
        raise _fail(label, f"{what} has {len(labels)} values for {count} images")
    return labels.to(torch.int64)


def _num_classes(label: str, given: int, classes: Sequence[str], fallback: int) -> int:
    if given and classes and given != len(classes):
        raise _fail(label, f"num_classes={given} but {len(classes)} class names")
    count = given or len(classes) or fallback
    if count < 1:
        raise _fail(label, "cannot tell the number of classes: give num_classes or classes")
    return count


def _check_labels(label: str, labels: torch.Tensor, what: str, num_classes: int) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        found = f"{int(labels.min())}..{int(labels.max())}"
        raise _fail(label, f"{what} range over {found}; expected 0..{num_classes - 1} ({num_classes} classes)")


def _stats(label: str, given: Sequence[float] | None, channels: int, default: tuple[float, ...], what: str):
    values = tuple(float(v) for v in given) if given is not None else default
    if len(values) != channels:
        raise _fail(label, f"{what} has {len(values)} values for {channels} channel(s)")
    return values


def load_arrays(cfg: DataConfig, answer: ArraySplits) -> tuple[ImageArrays, ImageArrays, Loaded]:
    """Both splits as :class:`ImageArrays`, checked against each other."""
    label = f"{KEY}={cfg.dataset}"
    split = {}
    for name in ("train", "val"):
        images = _uint8_chw(getattr(answer, f"{name}_images"), f"{name}_images", label, batch=True)
        labels = _labels(getattr(answer, f"{name}_labels"), f"{name}_labels", len(images), label)
        if not len(images):
            raise _fail(label, f"{name}_images is empty")
        split[name] = ImageArrays(images, labels)
    train, val = split["train"], split["val"]
    shape, val_shape = tuple(train.images.shape[1:]), tuple(val.images.shape[1:])
    if shape != val_shape:
        raise _fail(label, f"train images are {shape} (C, H, W) but val images {val_shape}")
    if shape[1] != shape[2]:
        raise _fail(label, f"images are {shape[1]}×{shape[2]}; expected square images")
    largest = int(max(train.labels.max(), val.labels.max())) + 1
    num_classes = _num_classes(label, answer.num_classes, answer.classes, largest)
    for name, arrays in split.items():
        _check_labels(label, arrays.labels, f"{name}_labels", num_classes)
    pixels = train.images.transpose(0, 1).reshape(shape[0], -1)
    mean = tuple((pixels.double().mean(1) / 255).tolist()) if answer.mean is None else answer.mean
    std = tuple((pixels.double().std(1).clamp(min=1) / 255).tolist()) if answer.std is None else answer.std
    stats = _stats(label, mean, shape[0], (), "mean"), _stats(label, std, shape[0], (), "std")
    return train, val, Loaded(answer, num_classes, shape[0], shape[1], *stats)


def _first(label: str, dataset: Dataset, name: str) -> tuple[torch.Tensor, int]:
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise _fail(label, f"the {name} dataset is not map-style (it needs __len__ and __getitem__)")
    if not len(dataset):
        raise _fail(label, f"the {name} dataset is empty")
    item = dataset[0]
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise _fail(label, f"{name}[0] is a {type(item).__name__}; expected an (image, label) pair")
    image = _uint8_chw(item[0], f"the image of {name}[0]", label, batch=False)
    if isinstance(item[1], bool) or not isinstance(item[1], int | np.integer | torch.Tensor):
        raise _fail(label, f"the label of {name}[0] is a {type(item[1]).__name__}; expected an int")
    return image, int(item[1])


def load_pair(cfg: DataConfig, answer: DatasetPair) -> Loaded:
    """The pair checked on its first items: image shapes, channels and labels."""
    label = f"{KEY}={cfg.dataset}"
    first = {name: _first(label, getattr(answer, name), name) for name in ("train", "val")}
    (image, _), (val_image, _) = first["train"], first["val"]
    num_classes = _num_classes(label, answer.num_classes, answer.classes, len(getattr(answer.train, "classes", ())))
    for name, (_, label) in first.items():
        _check_labels(label, torch.tensor([label]), f"labels of {name}", num_classes)
    channels, side = image.shape[0], 0
    if val_image.shape[0] != channels:
        raise _fail(label, f"train images have {channels} channel(s) but val images {val_image.shape[0]}")
    if not cfg.image_size:
        if image.shape[1] != image.shape[2] or tuple(val_image.shape) != tuple(image.shape):
            raise _fail(
                label,
                f"train[0] is {tuple(image.shape)} and val[0] {tuple(val_image.shape)} (C, H, W): give square images "
                "of one size, or set data.image_size to resize them",
            )
        side = image.shape[1]
    mean = _stats(label, answer.mean, channels, (0.5,) * channels, "mean")
    std = _stats(label, answer.std, channels, (0.25,) * channels, "std")
    return Loaded(answer, num_classes, channels, side, mean, std)


def plugin_recipe(cfg: DataConfig, loaded: Loaded) -> Recipe:
    """The factory data set's augmentation: none unless data.crop/flip ask (ImageFolder's with data.image_size)."""
    resized = isinstance(loaded.answer, DatasetPair) and bool(cfg.image_size)
    crop = ("resized" if resized else "none") if cfg.crop == "auto" else cfg.crop
    flip = bool(cfg.flip)
    if not cfg.augment:
        crop, flip = "none", False
    return Recipe(crop, resized, flip, loaded.mean, loaded.std, cfg.pad, cfg.cutout if cfg.augment else 0)


class MapImageDataset(Dataset):
    """Items ``(transform(image), label)`` of a map-style dataset, its images made uint8 C×H×W and checked."""

    def __init__(
        self, base: Dataset, transform: Transform | None, num_classes: int, channels: int, classes: Sequence[str] = ()
    ) -> None:
        self.base = base
        self.transform = transform
        self.num_classes = num_classes
        self.channels = channels
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def raw(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` as a uint8 C×H×W tensor and an int label, checked."""
        image, label = self.base[index]
        image = _uint8_chw(image, f"the image of item {index}", KEY, batch=False)
        if image.shape[0] != self.channels or not 0 <= int(label) < self.num_classes:
            raise ConfigError(
                f"{KEY}: item {index} has a {tuple(image.shape)} image and label {int(label)}; expected "
                f"{self.channels} channel(s) and labels 0..{self.num_classes - 1}"
            )
        return image, int(label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.raw(index)
        return (self.transform(image) if self.transform is not None else image), label


def train_count(cfg: DataConfig) -> int:
    """The factory's training set size (the factory is called; no image is transformed)."""
    answer = answer_of(cfg)
    if isinstance(answer, ArraySplits):
        return len(answer.train_labels)
    return len(answer.train)  # type: ignore[arg-type]


def factory_splits(cfg: DataConfig, copies: int = 1) -> DatasetSplits:
    """The factory's data set with its transforms (``copies`` training views), as ``build_datasets`` gives it."""
    answer = answer_of(cfg)
    if isinstance(answer, ArraySplits):
        train_arrays, val_arrays, loaded = load_arrays(cfg, answer)
        if cfg.train_subset:
            train_arrays = train_arrays.subset(subset_indices(len(train_arrays), cfg.train_subset, cfg.split_seed))
    else:
        loaded = load_pair(cfg, answer)
    recipe = plugin_recipe(cfg, loaded)
    size = loaded.side or cfg.image_size
    train_tf: Transform = build_transform(cfg.dataset, size, train=True, augment=cfg.augment, recipe=recipe)
    val_tf = build_transform(cfg.dataset, size, train=False, recipe=recipe)
    if copies > 1:
        train_tf = ManyViews(train_tf, copies)
    classes = tuple(answer.classes) or tuple(getattr(getattr(answer, "train", None), "classes", ()))
    if isinstance(answer, ArraySplits):
        train = TensorImageDataset(train_arrays, train_tf, classes)
        val = TensorImageDataset(val_arrays, val_tf, classes)
    else:
        base = answer.train
        if cfg.train_subset:
            base = Subset(base, subset_indices(len(base), cfg.train_subset, cfg.split_seed).tolist())  # type: ignore[arg-type]
        train = MapImageDataset(base, train_tf, loaded.num_classes, loaded.channels, classes)
        val = MapImageDataset(answer.val, val_tf, loaded.num_classes, loaded.channels, classes)
    return DatasetSplits(train, val, loaded.num_classes, loaded.channels, size, classes, recipe)
