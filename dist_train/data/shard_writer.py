"""``dist-train shard``: a data set as WebDataset tar shards, their DALI index files and a manifest.

Each sample is two tar members, ``<key>.<ext>`` (the encoded image: JPEG/PNG files as given, in-memory
arrays as lossless PNG) then ``<key>.cls`` (the label in decimal), with ``key`` the sample's 8-digit
position in its split. Shards are ``train-000000.tar``, ``val-000000.tar``, ... of at most
``shard_size`` bytes (a larger sample gets a shard of its own); each has the index DALI's
``readers.webdataset`` takes, as its ``wds2idx`` writes it (``<shard>.idx``). ``manifest.json`` (written
last) gives the source, class names, image channels and side, and per shard its samples, size and
SHA-256 (and its index's). The same source gives the same bytes: members in source order, fixed mtime,
owner and mode. A shard is written to ``.<name>.tmp``, flushed to disk and renamed, so an interrupted run
never leaves a partial file under a finished name (nor a manifest naming one).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from dist_train.config import DataConfig, load_config
from dist_train.data.arrays import TensorImageDataset
from dist_train.data.catalog import DATASETS
from dist_train.data.datasets import build_datasets
from dist_train.data.imagefolder import ImageFileDataset
from dist_train.data.shards import MANIFEST
from dist_train.errors import ConfigError, DataError

FORMAT = "dist_train webdataset shards"
VERSION = 1
DEFAULT_SHARD_SIZE = 256 * 2**20
BLOCK = 512
EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


def tar_header(name: str, size: int) -> bytes:
    """A USTAR header with fixed metadata (mtime 0, root-owned, mode 644): the same bytes on every run."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


@contextlib.contextmanager
def writing_to(path: Path, file: BinaryIO | None = None) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (a full disk's ENOSPC from ``write``), and remove its
    unfinished ``.<name>.tmp`` (closing ``file``, its open handle, first): a failed write leaves neither a
    nameless error nor a file filling the disk."""
    try:
        yield
    except OSError as e:
        if file is not None:
            with contextlib.suppress(OSError):  # flushing its buffer fails again on a full disk
                file.close()
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, f"{e.strerror or e} while writing (unfinished file removed)", str(path)) from None
        raise


def write_atomically(path: Path, chunks: Iterator[bytes] | list[bytes]) -> None:
    """Write ``chunks`` to ``.<name>.tmp`` beside ``path``, flush it to disk, then rename it to ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    with writing_to(path), temporary.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class ShardWriter:
    """One shard being written: its tar streams into ``.<name>.tar.tmp``; its index lines are kept."""

    def __init__(self, folder: Path, name: str) -> None:
        self.tar, self.index = folder / f"{name}.tar", folder / f"{name}.idx"
        self.temporary = self.tar.with_name(f".{self.tar.name}.tmp")
        with writing_to(self.tar):
            self.file = self.temporary.open("wb")
        self.digest = hashlib.sha256()
        self.lines: list[str] = []
        self.size = 0

    def _write(self, data: bytes) -> None:
        with writing_to(self.tar, self.file):
            self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        entries = []
        for ext, data in members:
            name = f"{key}.{ext}"
            self._write(tar_header(name, len(data)))
            entries.append(f"{ext} {self.size} {len(data)} {name}")
            self._write(data + b"\0" * (-len(data) % BLOCK))
        self.lines.append(" ".join(entries))

    def close(self) -> dict[str, object]:
        """Finish the tar (end blocks, flushed to disk, renamed) and write its index; their manifest entry."""
        self._write(b"\0" * (2 * BLOCK))
        with writing_to(self.tar, self.file):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        os.replace(self.temporary, self.tar)
        text = (f"v1.2 {len(self.lines)}\n" + "".join(f"{line}\n" for line in self.lines)).encode()
        write_atomically(self.index, [text])
        return {
            "tar": self.tar.name,
            "index": self.index.name,
            "samples": len(self.lines),
            "bytes": self.size,
            "sha256": self.digest.hexdigest(),
            "index_sha256": hashlib.sha256(text).hexdigest(),
        }


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 C×H×W tensor (1 or 3 channels) as PNG (lossless, the same bytes for the same pixels)."""
    pixels = image.permute(1, 2, 0).numpy()
    pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def encoded_samples(dataset: object, split: str) -> Iterator[tuple[str, bytes, int]]:
    """(extension, encoded image, label) of each sample of ``dataset``, in its order."""
    if isinstance(dataset, TensorImageDataset):
        arrays = dataset.arrays
        for image, label in zip(arrays.images, arrays.labels.tolist(), strict=True):
            yield "png", png_bytes(image), label
    elif isinstance(dataset, ImageFileDataset):
        for path, label in dataset.samples:
            ext = EXTENSIONS.get(Path(path).suffix.lower())
            if ext is None:
                raise DataError(f"shard: {path}: not a JPEG or PNG file")
            yield ext, Path(path).read_bytes(), label
    else:
        raise ConfigError(f"shard: the {split} set is a {type(dataset).__name__}, neither image arrays nor files")


def write_split(dataset: object, split: str, folder: Path, shard_size: int) -> dict[str, object]:
    """Shard one split (printing each finished shard); its manifest entry (sample count and shards)."""
    shards: list[dict[str, object]] = []
    shard: ShardWriter | None = None
    count = 0
    for count, (ext, data, label) in enumerate(encoded_samples(dataset, split), 1):
        members = [(ext, data), ("cls", str(label).encode())]
        if shard is not None and shard.size + sum(2 * BLOCK + len(d) for _, d in members) > shard_size:
            shards.append(_finish(shard))
            shard = None
        shard = shard or ShardWriter(folder, f"{split}-{len(shards):06d}")
        shard.add(f"{count - 1:08d}", members)
    if shard is not None:
        shards.append(_finish(shard))
    return {"samples": count, "shards": shards}


def _finish(shard: ShardWriter) -> dict[str, object]:
    entry = shard.close()
    print(f"{shard.tar}: {entry['samples']} samples, {entry['bytes'] / 2**20:.1f} MiB", flush=True)
    return entry


def write_shards(cfg: DataConfig, destination: str | Path, shard_size: int = DEFAULT_SHARD_SIZE) -> dict:
    """Shard ``cfg``'s data set (train and val splits, as the readers of ``dist_train.data`` give them) into
    ``destination``; returns the manifest. Files of an earlier run that the new manifest does not name are
    removed."""
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1 byte, got {shard_size}")
    if cfg.dataset == "webdataset":
        raise ConfigError("shard: the source is already shards")
    splits = build_datasets(cfg)
    folder = Path(destination).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the folder is valid again only once the new one is written
    for leftover in folder.glob(".*.tmp"):  # what an interrupted run was writing
        leftover.unlink()
    train = splits.train
    arrays = isinstance(train, TensorImageDataset)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": cfg.dataset,
        "classes": list(splits.class_names) or [str(i) for i in range(splits.num_classes)],
        "channels": splits.in_channels,
        "image_size": splits.image_size if arrays else 0,
        "splits": {
            name: write_split(dataset, name, folder, shard_size)
            for name, dataset in (("train", train), ("val", splits.val))
        },
    }
    named = {s[kind] for split in manifest["splits"].values() for s in split["shards"] for kind in ("tar", "index")}
    for path in folder.iterdir():
        if path.suffix in (".tar", ".idx") and path.name.startswith(("train-", "val-")) and path.name not in named:
            path.unlink()
    write_atomically(folder / MANIFEST, [(json.dumps(manifest, indent=1) + "\n").encode()])
    return manifest


UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes of ``256MB``, ``1GiB``, ``300m`` or ``1000``."""
    number = text.strip().lower().rstrip("bgikm") or "x"
    unit = text.strip().lower()[len(number) :]
    try:
        return int(float(number) * UNITS[unit])
    except (ValueError, KeyError):
        raise ConfigError(f"--shard-size: cannot read {text!r} as a size (e.g. 256MB, 1GiB, 1000000)") from None


def source_config(source: str, overrides: list[str]) -> DataConfig:
    """The data config of ``source``: a built-in data set's name, or an ImageFolder directory; ``overrides``
    are config keys (``data.root=...``, ``data.val_fraction=0.1``)."""
    if source in DATASETS:
        first = [f"data.dataset={source}"]
    elif Path(source).expanduser().is_dir():
        first = ["data.dataset=imagefolder", f"data.root={source}"]
    else:
        raise ConfigError(f"shard: {source} is neither a data set ({', '.join(DATASETS[:-1])}) nor a directory")
    return load_config(None, [*first, *overrides]).data
