"""Batch augmentation and the two loader backends (torch, DALI): same batches, M views, sharding."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import REPO, TINY, assert_cutout_squares, assert_ok, run_cli, subprocess_env, torchrun_cmd
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.data.dali import DaliTrainLoader
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.transforms import recipe_for
from dist_train.data.views import arrange_views
from dist_train.regime import cross_epoch_batches


def test_arrange_views_layouts():
    views = torch.arange(3 * 2).view(3, 2, 1, 1, 1).float()  # sample b, view m -> value 2b + m
    labels = torch.tensor([7, 8, 9])
    images, repeated = arrange_views(views, labels, "copy_major")
    assert images.flatten().tolist() == [0, 2, 4, 1, 3, 5] and repeated.tolist() == [7, 8, 9, 7, 8, 9]
    images, repeated = arrange_views(views, labels, "sample_major")
    assert images.flatten().tolist() == [0, 1, 2, 3, 4, 5] and repeated.tolist() == [7, 7, 8, 8, 9, 9]


def loaders(overrides: list[str], copies: int, micro_batch: int = 8) -> dict:
    cfg = load_config(None, [*overrides, f"augment.copies={copies}"])
    torch_data = build_datasets(cfg.data, copies=copies)
    dali_data = build_datasets(cfg.data)
    options = LoaderOptions(
        micro_batch, view_layout=cfg.augment.layout, across_epochs=cross_epoch_batches(cfg), copies=copies
    )
    return {
        "torch": build_train_loader(torch_data.train, options),
        "dali": DaliTrainLoader(dali_data.train, recipe_for(cfg.data), torch_data.image_size, options),
    }


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b", "c"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for index in range(8):
            pixels = torch.randint(0, 255, (40, 48, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


SOURCES = {
    "synthetic": ["data.synthetic_train_size=64"],
    "mnist-like": ["data.synthetic_train_size=64", "data.crop=pad", "data.pad=2", "data.flip=false"],
    "imagefolder": ["data.dataset=imagefolder", "data.image_size=24", "data.val_fraction=0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("copies", [1, 4])
@pytest.mark.parametrize("layout", ["copy_major", "sample_major"])
def test_backends_give_the_same_batches(source, copies, layout, jpeg_root, dali):
    overrides = [*SOURCES[source], f"augment.layout={layout}"]
    if source == "imagefolder":
        overrides.append(f"data.root={jpeg_root}")
    batches = {name: next(iter(loader.epoch(0))) for name, loader in loaders(overrides, copies).items()}
    (torch_images, torch_labels), (dali_images, dali_labels) = batches["torch"], batches["dali"]
    size = 24 if source == "imagefolder" else 32
    assert torch_images.shape == dali_images.shape == (8 * copies, 3, size, size)
    assert torch_images.dtype == dali_images.dtype == torch.float32
    assert torch_labels.dtype == dali_labels.dtype == torch.int64
    assert torch.equal(torch_labels, dali_labels)  # same samples in the same order and layout
    # Both normalise the same way: similar statistics.
    assert torch_images.mean().item() == pytest.approx(dali_images.mean().item(), abs=0.3)
    assert torch_images.std().item() == pytest.approx(dali_images.std().item(), rel=0.25)
    if copies > 1:
        for images, labels in batches.values():
            views = (
                images.view(copies, 8, *images.shape[1:])
                if layout == "copy_major"
                else images.view(8, copies, *images.shape[1:]).transpose(0, 1)
            )
            view_labels = labels.view(copies, 8) if layout == "copy_major" else labels.view(8, copies).t()
            assert (view_labels == view_labels[0]).all()  # the M views of a sample share its label
            # Independently augmented: two views of a sample rarely coincide (a few % with pad 2 and no flip).
            pairs = [(a, b) for a in range(copies) for b in range(a + 1, copies)]
            same = sum(torch.equal(views[a, i], views[b, i]) for a, b in pairs for i in range(8))
            assert same < len(pairs) * 8 / 4


@pytest.mark.slow
@pytest.mark.parametrize("across", [False, True])
def test_fashion_mnist_in_both_backends(fashion_mnist, dali, across):
    """The real Fashion-MNIST files (a 250-image subset) through the torch and the DALI loader: same samples."""
    overrides = ["data.dataset=fashion_mnist", "data.train_subset=250", f"data.cross_epoch_batches={across}"]
    for epoch in (0, 1):
        batches = {}
        for name, loader in loaders(overrides, 1, micro_batch=32).items():
            batches[name] = list(loader.epoch(epoch))
        torch_batches, dali_batches = batches["torch"], batches["dali"]
        assert len(torch_batches) == len(dali_batches) == (8 if across else 7)  # round(250 / 32) or 250 // 32
        for (torch_images, torch_labels), (dali_images, dali_labels) in zip(torch_batches, dali_batches, strict=True):
            assert torch_images.shape == dali_images.shape == (32, 1, 28, 28)
            assert torch.equal(torch_labels, dali_labels)
            torch.testing.assert_close(torch_images, dali_images, atol=1e-5, rtol=0)  # no augmentation


@pytest.mark.slow
def test_epochs_are_reshuffled(dali):
    for loader in loaders(SOURCES["synthetic"], 1).values():
        first, second = (torch.cat([labels for _, labels in loader.epoch(e)]) for e in (0, 1))
        assert not torch.equal(first, second) and sorted(first.tolist()) == sorted(second.tolist())


@pytest.mark.slow
@pytest.mark.parametrize(
    "length, micro_batch, expected_missing, expected_duplicates",
    [(128, 16, 0, 0), (100, 16, 4, 0), (101, 17, 0, 1)],
    ids=["exact", "last-batch-dropped", "padded"],
)
def test_two_processes_shard_the_epoch(tmp_path, length, micro_batch, expected_missing, expected_duplicates, dali):
    worker = REPO / "tests" / "workers" / "shard_coverage.py"
    cmd = [*torchrun_cmd(2), str(worker), str(tmp_path), str(length), str(micro_batch)]
    assert_ok(subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for backend in ("torch", "dali"):
        for epoch in ("0", "1"):
            per_rank = [r[backend][epoch] for r in ranks]
            assert len(per_rank[0]) == len(per_rank[1])  # every rank takes the same number of steps
            counts = Counter(per_rank[0] + per_rank[1])
            assert length - len(counts) == expected_missing
            assert sum(c - 1 for c in counts.values()) == expected_duplicates
            if not expected_duplicates:
                assert not set(per_rank[0]) & set(per_rank[1])  # no sample on both ranks
        assert ranks[0][backend]["0"] != ranks[0][backend]["1"]  # reshuffled each epoch
    assert ranks[0]["torch"] == ranks[0]["dali"]  # the same order from both backends


@pytest.mark.slow
def test_missing_dali_is_one_clear_line(tmp_path):
    code = (
        "import sys; sys.modules['nvidia.dali'] = None; from dist_train.cli import main; "
        f"sys.exit(main(['train', *{TINY!r}, 'data.backend=dali', 'out_dir={tmp_path}']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dist-train: error: data.backend=dali needs NVIDIA DALI, which is not installed: pip install -e '.[dali]'"
    )


@pytest.mark.slow
def test_dali_batch_augmentation_learns_with_two_processes(tmp_path, dali):
    args = [
        "train",
        "--config",
        "configs/quickstart.yaml",
        f"out_dir={tmp_path}",
        "train.epochs=3",
        "data.backend=dali",
        "augment.copies=4",
    ]
    result = run_cli(args, nproc=2)
    assert_ok(result)
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["val_acc"] >= 0.4 and summary["steps"] == 3 * 32  # chance is 0.1
    events = EventAccumulator(str(tmp_path / "quickstart"))
    events.Reload()
    assert "augment/views" in events.Tags()["images"]
    grid = events.Images("augment/views")[0]
    # 8 samples in 2 columns of 4 rows, each 4 views of 32 px, 1 px padding, shown 3 times larger, with the class
    # names to the left: wider than tall, as a TensorBoard card shows it
    assert grid.height == 3 * (4 * 33 + 1) and grid.width > 2 * 3 * (4 * 33 + 1)


@pytest.mark.slow
def test_dali_pad_crop_offsets_are_whole_pixels_in_range(dali):
    """The DALI pad-crop shifts by -pad..pad pixels, each equally often, like torchvision's RandomCrop."""
    import numpy as np

    from dist_train.data.arrays import ImageArrays, TensorImageDataset

    size, pad = 12, 3
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    image[0, size // 2, size // 2] = 255  # one bright pixel: its position after the crop gives the shift
    arrays = ImageArrays(image.expand(256, 3, size, size).clone(), torch.zeros(256, dtype=torch.long))
    cfg = load_config(None, ["data.crop=pad", f"data.pad={pad}", "data.flip=false"])
    loader = DaliTrainLoader(TensorImageDataset(arrays), recipe_for(cfg.data), size, LoaderOptions(64))
    images = torch.cat([batch for batch, _ in loader.epoch(0)])
    bright = images[:, 0].flatten(1).argmax(1)
    shifts = np.stack([(bright // size).numpy(), (bright % size).numpy()]) - size // 2
    assert shifts.min() == -pad and shifts.max() == pad
    counts = np.bincount((shifts + pad).ravel(), minlength=2 * pad + 1)
    assert counts.min() > 0.5 * counts.mean()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_cutout_zeroes_one_clipped_square_per_view(backend, dali):
    """A white image: after normalisation only the cutout square is 0 in every channel."""
    from dist_train.data.arrays import ImageArrays, TensorImageDataset

    size, side = 16, 6
    arrays = ImageArrays(torch.full((64, 3, size, size), 255, dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    cfg = load_config(None, ["data.crop=none", "data.flip=false", f"data.cutout={side}", "augment.copies=2"])
    recipe = recipe_for(cfg.data)
    if backend == "torch":
        from dist_train.data.transforms import build_transform
        from dist_train.data.views import ManyViews

        transform = ManyViews(build_transform("synthetic", size, train=True, recipe=recipe), 2)
        loader = build_train_loader(TensorImageDataset(arrays, transform), LoaderOptions(32))
    else:
        loader = DaliTrainLoader(TensorImageDataset(arrays), recipe, size, LoaderOptions(32, copies=2))
    images = torch.cat([batch for batch, _ in loader.epoch(0)])
    assert_cutout_squares(images, side)
