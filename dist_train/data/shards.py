"""``data.dataset: webdataset``: the tar shards of ``dist-train shard`` (``data.root``), read sample by sample.

Opening a shard directory reads its ``manifest.json`` and every shard's index (the one DALI's
``wds2idx`` writes: per sample, each member's extension, data offset, size and name) and checks them
against each other and against the tars' sizes, without reading an image. A sample is then one
``pread`` at its offset (its image and its ``.cls`` label lie next to each other), so any sample order
costs the same, and a rank reads only the samples of its micro-batches: a resumed epoch skips the ones
before its checkpoint unread. Each process opens a shard once, when it first reads from it.

Every problem is one line naming the shard and the sample: a missing manifest, shard or index, a tar
shorter than the manifest says (truncated), an index that is not the one written with the tar (stale),
a sample with no image or no label, a label out of range, an undecodable image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dist_train.data.arrays import Transform, reason
from dist_train.data.catalog import CATALOG
from dist_train.data.splits import subset_indices
from dist_train.errors import DataError

MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
BLOCK = 512


def _fail(message: str) -> DataError:
    return DataError(f"webdataset: {message}")


@dataclass(frozen=True)
class ShardFile:
    """One shard of a split, as the manifest lists it."""

    tar: Path
    index: Path
    samples: int
    size: int
    index_sha256: str


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the shard directory ``root``."""
    folder = Path(root).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        where = f"{folder} is not a directory" if not folder.is_dir() else f"no {MANIFEST} in {folder}"
        raise _fail(f"{where} (make shards with: dist-train shard SRC {folder})")
    try:
        manifest = json.loads(path.read_text())
        for split in ("train", "val"):
            manifest["splits"][split]["samples"] + len(manifest["splits"][split]["shards"])
        manifest["classes"], manifest["channels"]
    except (ValueError, KeyError, TypeError) as e:
        raise _fail(f"{path} is not a shard manifest ({reason(e)})") from None
    return manifest


def _parse_index(shard: ShardFile, text: str) -> np.ndarray:
    """(samples, 4) int64 rows: image offset, image size, label offset, label size; checked against ``shard``."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1") or not head[1].isdigit():
        raise _fail(f"{shard.index} is not a DALI webdataset index (first line {lines[:1]})")
    rows = np.zeros((len(lines) - 1, 4), dtype=np.int64)
    for i, line in enumerate(lines[1:]):
        words = line.split()
        members = {words[j]: words[j : j + 4] for j in range(0, len(words) - 3, 4)}
        key = words[3].rsplit(".", 1)[0] if len(words) > 3 else f"#{i}"
        image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
        if image is None:
            raise _fail(f"{shard.tar} sample {key} has no image (.jpg/.png)")
        if "cls" not in members:
            raise _fail(f"{shard.tar} sample {key} has no label (.cls)")
        rows[i] = int(image[1]), int(image[2]), int(members["cls"][1]), int(members["cls"][2])
    if int(head[1]) != len(rows) or len(rows) != shard.samples:
        raise _fail(
            f"{shard.index} lists {len(rows)} samples (its header: {head[1]}), the manifest {shard.samples}: "
            "the manifest disagrees with the shards"
        )
    return rows


def sample_name(shard: ShardFile, row: int, label: bool = False) -> str:
    """``<tar>:<member>`` of the image (or with ``label``, the ``.cls`` label) of sample ``row`` of ``shard``
    (read again from its index)."""
    words = shard.index.read_text().splitlines()[row + 1].split()
    members = {words[j]: words[j + 3] for j in range(0, len(words) - 3, 4)}
    wanted = ("cls",) if label else IMAGE_EXTENSIONS
    return f"{shard.tar}:{next((members[ext] for ext in wanted if ext in members), words[3])}"


class ShardReader:
    """The samples of one split of a shard directory, read by position (shards in manifest order)."""

    def __init__(self, root: str | Path, split: str, manifest: dict[str, Any]) -> None:
        folder = Path(root).expanduser()
        entries = manifest["splits"][split]
        self.shards = [
            ShardFile(folder / s["tar"], folder / s["index"], s["samples"], s["bytes"], s["index_sha256"])
            for s in entries["shards"]
        ]
        self.classes = len(manifest["classes"])
        self.image_size = int(manifest.get("image_size") or 0)
        """Side of every (square) image; 0: images of any size."""
        self.rows = np.concatenate([self._open(shard) for shard in self.shards] or [np.zeros((0, 4), np.int64)])
        self.shard_of = np.repeat(np.arange(len(self.shards)), [s.samples for s in self.shards])
        self.first = np.cumsum([0] + [s.samples for s in self.shards])
        if len(self.rows) != entries["samples"]:
            raise _fail(
                f"{folder / MANIFEST} counts {entries['samples']} {split} samples but its shards hold "
                f"{len(self.rows)}: the manifest disagrees with the shards"
            )
        self._files: dict[int, int] = {}

    def _open(self, shard: ShardFile) -> np.ndarray:
        """The index rows of ``shard``, after checking the tar and index are the ones the manifest names."""
        if not shard.tar.is_file():
            raise _fail(f"shard {shard.tar} is missing")
        if not shard.index.is_file():
            raise _fail(f"index {shard.index} of shard {shard.tar} is missing (rebuild it: wds2idx {shard.tar})")
        data = shard.index.read_bytes()
        rows = _parse_index(shard, data.decode(errors="replace"))
        if hashlib.sha256(data).hexdigest() != shard.index_sha256:
            raise _fail(f"index {shard.index} is stale: it is not the index written with {shard.tar}")
        size = shard.tar.stat().st_size
        if size < shard.size:
            ends = rows[:, [0, 2]] + rows[:, [1, 3]]
            cut = int(np.argmax(ends.max(axis=1) > size)) if (ends > size).any() else len(rows) - 1
            raise _fail(
                f"shard {shard.tar} is truncated ({size} bytes, the manifest says {shard.size}): sample "
                f"{sample_name(shard, cut)} and those after it are cut off"
            )
        if size != shard.size:
            raise _fail(f"shard {shard.tar} is {size} bytes, the manifest says {shard.size}: it was changed")
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, index: int, label: bool = False) -> str:
        """Where sample ``index`` lives, for messages: ``<tar>:<image member>`` (or its label member)."""
        shard = int(self.shard_of[index])
        return sample_name(self.shards[shard], index - int(self.first[shard]), label)

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.shards[shard].tar, os.O_RDONLY)
        return fd

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """Sample ``index``'s encoded image (uint8 bytes) and label, checked against their tar headers."""
        image_at, image_size, label_at, label_size = self.rows[index].tolist()
        start, end = image_at - BLOCK, max(image_at + image_size, label_at + label_size)
        fd = self._fd(int(self.shard_of[index]))
        data = os.pread(fd, end - start, start) if end - start < 2**24 else b""
        if len(data) != end - start:  # members far apart (not written by dist-train shard): read each
            data = b""
        image = self._member(fd, data, start, image_at, image_size, index)
        label = self._member(fd, data, start, label_at, label_size, index)
        try:
            value = int(label)
        except ValueError:
            raise _fail(f"{self.name(index, label=True)}: its label {label[:20]!r} is not a class number") from None
        if not 0 <= value < self.classes:
            raise _fail(f"{self.name(index, label=True)}: label {value} is outside the {self.classes} classes")
        return np.frombuffer(image, dtype=np.uint8), value

    def _member(self, fd: int, data: bytes, start: int, offset: int, size: int, index: int) -> bytes:
        """A member's data (from ``data``, read at ``start``, when it holds it), after checking its tar header."""
        if data and offset - BLOCK >= start and offset + size <= start + len(data):
            header = data[offset - BLOCK - start : offset - start]
            body = data[offset - start : offset - start + size]
        else:
            header = os.pread(fd, BLOCK, offset - BLOCK)
            body = os.pread(fd, size, offset)
        if len(body) != size or len(header) != BLOCK:
            raise _fail(f"{self.name(index)}: the shard ends inside this sample (truncated)")
        try:
            recorded = int(header[124:136].split(b"\0")[0].strip() or b"-1", 8)
        except ValueError:
            recorded = -1
        if header[257:262] != b"ustar" or recorded != size:
            raise _fail(f"{self.name(index)}: the index does not match the tar here (stale index?)")
        return body

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # each process opens the shards itself

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)


def decode(data: np.ndarray, channels: int, name: Callable[[], str]) -> torch.Tensor:
    """An encoded image as a uint8 C×H×W tensor of ``channels`` (1: greyscale, 3: RGB); errors say ``name()``."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise _fail(f"cannot decode image {name()}: {reason(e)}") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


class ShardDataset(Dataset):
    """Items ``(transform(image), label)`` of one split of a shard directory (its samples at ``positions``,
    all of them when None), each read from its tar when loaded."""

    def __init__(
        self,
        reader: ShardReader,
        channels: int,
        classes: Sequence[str] = (),
        positions: np.ndarray | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.reader = reader
        self.channels = channels
        self.classes = tuple(classes)
        self.positions = np.arange(len(reader)) if positions is None else positions
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def encoded(self, index: int) -> tuple[np.ndarray, int]:
        """Item ``index``'s encoded image bytes and label."""
        return self.reader.read(int(self.positions[index]))

    def name(self, index: int) -> str:
        """Where item ``index`` lives: ``<tar>:<image member>``."""
        return self.reader.name(int(self.positions[index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = self.encoded(index)
        image = decode(data, self.channels, lambda: self.name(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def load_shards(root: str | Path, train_subset: int = 0, split_seed: int = 0) -> tuple[ShardDataset, ShardDataset]:
    """The train and val splits of the shard directory ``root`` (untransformed); ``train_subset`` picks
    training samples as ``data.train_subset`` does for every other data set."""
    manifest = read_manifest(root)
    classes, channels = manifest["classes"], manifest["channels"]
    train, val = (ShardReader(root, split, manifest) for split in ("train", "val"))
    positions = subset_indices(len(train), train_subset, split_seed).numpy() if train_subset else None
    return ShardDataset(train, channels, classes, positions), ShardDataset(val, channels, classes)


def recipe_source(root: str | Path) -> str:
    """The data set whose augmentation and normalisation the shards of ``root`` take: their source's when it
    has its own, else ImageFolder's (encoded files) or the synthetic set's (arrays)."""
    manifest = read_manifest(root)
    source = CATALOG.get(manifest.get("source"))
    if source is not None and source.recipe is not None:
        return source.name
    return "synthetic" if manifest.get("image_size") else "imagefolder"
