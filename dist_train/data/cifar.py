"""CIFAR-10 / CIFAR-100 from the python-pickle distribution (optionally downloaded by torchvision)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dist_train.data.arrays import ImageArrays, reason
from dist_train.data.catalog import CATALOG
from dist_train.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str
    """Sub-folder created by the official archive (and by torchvision's download)."""
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
        CATALOG["cifar10"].num_classes,
    ),
    "cifar100": CifarLayout(
        "cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", CATALOG["cifar100"].num_classes
    ),
}


def _find_dir(layout: CifarLayout, root: Path) -> Path | None:
    """``root`` or ``root/<folder>``, whichever holds any of the pickle files."""
    for folder in (root, root / layout.folder):
        if any((folder / name).is_file() for name in (*layout.train_files, layout.test_file)):
            return folder
    return None


def _download(layout: CifarLayout, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if layout.classes == 10 else datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network, disk and archive errors all end up here
        raise DataError(f"{layout.name}: download into {root} failed: {reason(e)}") from None


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that names something other than the numpy arrays a CIFAR batch holds."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run any code it names, and a
    data set file from elsewhere must not."""

    ALLOWED = frozenset(
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
        for name in ("_reconstruct", "scalar", "_frombuffer")
    ) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"{module}.{name}")
        return super().find_class(module, name)


def read_batch(layout: CifarLayout, path: Path) -> ImageArrays:
    """One pickle file: a dict with ``b"data"`` (N×3072 uint8) and the label list."""
    if not path.is_file():
        raise DataError(f"{layout.name}: missing file {path}")
    try:
        with path.open("rb") as f:
            batch = SafeUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as e:
        raise DataError(f"{layout.name}: {path} is not a CIFAR pickle: it names {e} (refused, not loaded)") from None
    except Exception as e:  # unpickling can fail with almost any exception type
        raise DataError(f"{layout.name}: {path} is truncated or not a CIFAR pickle ({reason(e)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        found = f"keys {list(batch)[:6]}" if isinstance(batch, dict) else f"a {type(batch).__name__}"
        raise DataError(f"{layout.name}: {path} lacks the keys b'data' and {layout.label_key!r} (found {found})")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{layout.name}: {path}: expected uint8 data of shape N×3072, got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{layout.name}: {path}: labels are not a list of integers ({reason(e)})") from None
    if labels.shape != (len(data),):
        raise DataError(f"{layout.name}: {path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise DataError(
            f"{layout.name}: {path}: labels outside 0..{layout.classes - 1} (found {labels.min()}..{labels.max()})"
        )
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ImageArrays(images, torch.from_numpy(labels))


def _concat(parts: list[ImageArrays]) -> ImageArrays:
    return ImageArrays(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def load_cifar(name: str, root: str | Path, download: bool = False) -> tuple[ImageArrays, ImageArrays, int]:
    """(train, test, num_classes) of ``name`` (``"cifar10"`` or ``"cifar100"``) found under ``root``."""
    layout = LAYOUTS[name]
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{name}: {root} is not a directory")
    folder = _find_dir(layout, root) if root.is_dir() else None
    wanted = (*layout.train_files, layout.test_file)
    if download and (folder is None or not all((folder / f).is_file() for f in wanted)):
        _download(layout, root)
        folder = _find_dir(layout, root)
    if folder is None:
        if not root.is_dir():
            raise DataError(f"{name}: directory not found: {root} (set data.download=true to fetch it)")
        raise DataError(f"{name}: no CIFAR pickle files ({', '.join(wanted)}) in {root} or {root / layout.folder}")
    train = _concat([read_batch(layout, folder / f) for f in layout.train_files])
    test = read_batch(layout, folder / layout.test_file)
    return train, test, layout.classes
