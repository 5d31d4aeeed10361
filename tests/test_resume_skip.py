"""A mid-epoch resume skips the batches before its checkpoint without reading them, in both loader backends,
and the batches after it are the ones an uninterrupted epoch gives (see dist_train/data/loader.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_train.config import DataConfig
from dist_train.data import build_datasets
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.transforms import recipe_for

MICRO = 4
BATCHES = 8  # per epoch: 32 training images


def image_tree(root: Path, count: int = 40) -> Path:
    """An ImageFolder tree of small PNGs, each a different pattern."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> DataConfig:
    """32 training images (the rest held out), randomly cropped and flipped."""
    return DataConfig(dataset="imagefolder", root=str(image_tree(tmp_path)), image_size=16, val_fraction=0.2)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every image file decoded in this process."""
    from dist_train.data import imagefolder

    reads: list[str] = []
    decode = imagefolder.load_image

    def counted(path):
        reads.append(str(path))
        return decode(path)

    monkeypatch.setattr(imagefolder, "load_image", counted)
    return reads


def test_torch_loader_skips_without_reading(tree: DataConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the main process (no workers): a resumed epoch decodes only the images after the checkpoint, and with
    the checkpoint's random state it gives the uninterrupted epoch's batches."""
    data = build_datasets(tree)
    loader = build_train_loader(data.train, LoaderOptions(MICRO, seed=3))
    reads = count_reads(monkeypatch)
    torch.manual_seed(0)
    full, states = [], []
    for images, labels in iter_with_states(loader.epoch(1), states):
        full.append((images, labels))
    assert len(full) == BATCHES and len(reads) == BATCHES * MICRO
    reads.clear()
    skip = 5
    torch.set_rng_state(states[skip])  # what a checkpoint after batch 5 keeps (dist_train.train_state.rng_state)
    tail = list(loader.epoch(1, start=skip))
    assert len(reads) == (BATCHES - skip) * MICRO  # the first 5 batches were never decoded
    expected = {p for batch in loader.order.micro_batches(1)[skip:] for p in (data.train.samples[i][0] for i in batch)}
    assert set(reads) == expected
    for (images, labels), (want_images, want_labels) in zip(tail, full[skip:], strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def iter_with_states(batches, states: list) -> object:
    """Yield ``batches``, recording the random state before each one is loaded."""
    iterator = iter(batches)
    while True:
        states.append(torch.get_rng_state())
        try:
            yield next(iterator)
        except StopIteration:
            return


@pytest.mark.slow
def test_torch_workers_give_each_batch_its_own_seed(tree: DataConfig) -> None:
    """With loader workers every batch seeds its own augmentation: a resumed epoch gives the uninterrupted
    epoch's batches whatever the workers made before (and whatever the main process's random state)."""
    data = build_datasets(tree)
    loader = build_train_loader(data.train, LoaderOptions(MICRO, seed=3, workers=2))
    full = list(loader.epoch(1))
    torch.manual_seed(12345)
    tail = list(loader.epoch(1, start=3))
    assert len(tail) == BATCHES - 3
    for (images, labels), (want_images, want_labels) in zip(tail, full[3:], strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert not torch.equal(full[0][0], full[1][0])


@pytest.mark.slow
def test_dali_loader_skips_without_reading(tree: DataConfig, dali: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """DALI's pipeline is fed only the files after the checkpoint, and since each micro-batch's random draws
    come from its own seed, the resumed epoch's batches are the uninterrupted ones, from any micro-batch."""
    from dist_train.data import dali_pipelines
    from dist_train.data.dali import DaliTrainLoader

    data = build_datasets(tree)
    loader = DaliTrainLoader(data.train, recipe_for(tree), data.image_size, LoaderOptions(MICRO, seed=3))
    reads: list[str] = []
    read_file = dali_pipelines.read_file

    def counted(path):
        reads.append(str(path))
        return read_file(path)

    monkeypatch.setattr(dali_pipelines, "read_file", counted)
    full = list(loader.epoch(1))
    assert len(full) == BATCHES and len(reads) == BATCHES * MICRO
    for skip in (3, 4):
        reads.clear()
        tail = list(loader.epoch(1, start=skip))
        assert len(reads) == (BATCHES - skip) * MICRO  # files read and decoded: only those after the checkpoint
        expected = {data.train.samples[i][0] for batch in loader.order.micro_batches(1)[skip:] for i in batch}
        assert set(reads) == expected
        for (images, labels), (want_images, want_labels) in zip(tail, full[skip:], strict=True):
            assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
