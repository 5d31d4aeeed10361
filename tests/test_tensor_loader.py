"""data.backend=tensor: the split on the device, batch-wise augmentation, the torch backend's sample order."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, assert_cutout_squares, assert_ok, run_cli

from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.data.arrays import ImageArrays, TensorImageDataset
from dist_train.data.build import build_training_loader, resolve_data_backend, training_copies
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.tensor_loader import TensorTrainLoader
from dist_train.data.transforms import build_transform, recipe_for
from dist_train.distributed import DistContext
from dist_train.errors import ConfigError
from dist_train.swap import bn_recompute_batches, unaugmented


def both(overrides: list[str], options: LoaderOptions) -> tuple:
    """The torch and the tensor loader of one config, with the same options."""
    cfg = load_config(None, ["data.synthetic_train_size=100", "data.synthetic_val_size=8", *overrides])
    views = build_datasets(cfg.data, copies=options.copies)
    single = build_datasets(cfg.data)
    return build_train_loader(views.train, options), TensorTrainLoader(single.train, recipe_for(cfg.data), options)


def assert_same_epochs(torch_loader, tensor_loader, epochs=(0, 1)) -> None:
    for epoch in epochs:
        expected, got = list(torch_loader.epoch(epoch)), list(tensor_loader.epoch(epoch))
        assert len(got) == len(expected) == torch_loader.steps_in(epoch) * torch_loader.order.grad_accum_steps
        for (want_images, want_labels), (images, labels) in zip(expected, got, strict=True):
            assert images.dtype == want_images.dtype == torch.float32 and images.shape == want_images.shape
            assert labels.dtype == torch.int64 and torch.equal(labels, want_labels)
            torch.testing.assert_close(images, want_images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("rank", [0, 1])
def test_same_batches_as_torch_without_augmentation(across, rank):
    """Two ranks, 2 accumulation steps, drop-last or across epochs: the same labels and images as the torch loader."""
    options = LoaderOptions(6, grad_accum_steps=2, rank=rank, world_size=2, seed=7, across_epochs=across)
    assert_same_epochs(*both(["data.augment=false"], options), epochs=(0, 1, 2))


@pytest.mark.parametrize("layout", ["copy_major", "sample_major"])
def test_views_are_laid_out_as_in_the_torch_backend(layout):
    """M = 3 unaugmented views: the tensor loader's B·M images are the torch backend's, in the same layout."""
    options = LoaderOptions(8, seed=1, copies=3, view_layout=layout)
    torch_loader, tensor_loader = both(["data.augment=false"], options)
    assert next(iter(tensor_loader.epoch(0)))[0].shape == (24, 3, 32, 32)
    assert_same_epochs(torch_loader, tensor_loader)


def test_one_channel_normalisation_matches():
    """MNIST's recipe on 1-channel 28×28 images: the torch evaluation transform's values."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=generator)
    arrays = ImageArrays(images, torch.arange(40) % 10)
    cfg = load_config(None, ["data.dataset=mnist", "data.root=unused"])
    transform = build_transform("mnist", 28, train=True, recipe=recipe_for(cfg.data))
    options = LoaderOptions(8, seed=2)
    torch_loader = build_train_loader(TensorImageDataset(arrays, transform), options)
    tensor_loader = TensorTrainLoader(TensorImageDataset(arrays), recipe_for(cfg.data), options)
    assert_same_epochs(torch_loader, tensor_loader)


def test_resume_gives_the_rest_of_the_epoch_without_computing_the_skipped_batches(monkeypatch):
    """Augmented (pad-crop, flip, cutout, M = 2): epoch(e, start=k) is batches k.. of the uninterrupted epoch,
    whatever the process's random state, and batches before k are never made."""
    cfg = load_config(None, ["data.synthetic_train_size=64", "data.cutout=8"])
    data = build_datasets(cfg.data)
    loader = TensorTrainLoader(data.train, recipe_for(cfg.data), LoaderOptions(8, seed=3, copies=2))
    made: list[torch.Tensor] = []
    batch = loader.batch

    def counted(index, seed):
        made.append(index)
        return batch(index, seed)

    monkeypatch.setattr(loader, "batch", counted)
    full = list(loader.epoch(1))
    assert len(full) == len(made) == 8
    made.clear()
    torch.manual_seed(12345)
    tail = list(loader.epoch(1, start=5))
    assert len(made) == 3
    for (images, labels), (want_images, want_labels) in zip(tail, full[5:], strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert not torch.equal(full[0][0], full[1][0])
    again = next(iter(loader.epoch(1)))[0]
    other_epoch = next(iter(loader.epoch(2)))[0]
    assert torch.equal(again, full[0][0])  # a function of (seed, epoch, rank, position) only
    seeded = TensorTrainLoader(data.train, recipe_for(cfg.data), LoaderOptions(8, seed=4, copies=2))
    assert not torch.equal(next(iter(seeded.epoch(1)))[0], full[0][0])  # and of the seed
    assert not torch.equal(other_epoch, again)


def pixel_images(size: int, count: int) -> TensorImageDataset:
    """``count`` black images with one bright pixel at (size // 2, size // 4): its position gives the shift."""
    images = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    images[:, :, size // 2, size // 4] = 255
    return TensorImageDataset(ImageArrays(images, torch.zeros(count, dtype=torch.long)))


def test_pad_crop_shifts_are_whole_pixels_each_equally_likely():
    size, pad = 12, 3
    cfg = load_config(None, ["data.crop=pad", f"data.pad={pad}", "data.flip=false"])
    loader = TensorTrainLoader(pixel_images(size, 512), recipe_for(cfg.data), LoaderOptions(64))
    images = torch.cat([batch for batch, _ in loader.epoch(0)])
    bright = images[:, 0].flatten(1).argmax(1)
    rows, cols = bright // size - size // 2, bright % size - size // 4
    for shift in (rows, cols):
        assert shift.min() == -pad and shift.max() == pad
        counts = torch.bincount(shift + pad, minlength=2 * pad + 1).float()
        assert counts.min() > 0.6 * counts.mean()
    assert ((images[:, 0] > 0).flatten(1).sum(1) == 1).all()  # one pixel moved, the rest padding or black


def test_flips_half_of_the_views_independently():
    """No crop, flips only: each of M = 4 views of a sample is flipped or not on its own draw."""
    size = 12
    cfg = load_config(None, ["data.crop=none", "data.flip=true"])
    options = LoaderOptions(64, copies=4, view_layout="sample_major")
    loader = TensorTrainLoader(pixel_images(size, 256), recipe_for(cfg.data), options)
    images = torch.cat([batch for batch, _ in loader.epoch(0)])
    col = images[:, 0].flatten(1).argmax(1) % size
    assert set(col.tolist()) == {size // 4, size - 1 - size // 4}
    flipped = (col != size // 4).view(-1, 4)
    assert 0.4 < flipped.float().mean() < 0.6
    mixed = (flipped.any(1) & ~flipped.all(1)).float().mean()
    assert mixed > 0.7  # independent views: 1 - 2/16 of the samples have both flipped and unflipped views


def test_cutout_zeroes_one_clipped_square_per_view():
    """A white image: after normalisation only the cutout square is 0 in every channel."""
    size, side = 16, 6
    arrays = ImageArrays(torch.full((64, 3, size, size), 255, dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    cfg = load_config(None, ["data.crop=none", "data.flip=false", f"data.cutout={side}"])
    loader = TensorTrainLoader(TensorImageDataset(arrays), recipe_for(cfg.data), LoaderOptions(32, copies=2))
    images = torch.cat([batch for batch, _ in loader.epoch(0)])
    assert_cutout_squares(images, side)


def test_augmented_statistics_match_the_torch_backend():
    """Pad-crop + flip + M = 4 on synthetic data: the same labels and similar pixel statistics as torch."""
    options = LoaderOptions(16, seed=5, copies=4)
    torch_loader, tensor_loader = both([], options)
    (want, want_labels), (got, labels) = next(iter(torch_loader.epoch(0))), next(iter(tensor_loader.epoch(0)))
    assert torch.equal(labels, want_labels) and got.shape == want.shape
    assert got.mean().item() == pytest.approx(want.mean().item(), abs=0.1)
    assert got.std().item() == pytest.approx(want.std().item(), rel=0.1)
    views = got.view(4, 16, *got.shape[1:])
    same = sum(torch.equal(views[a, i], views[b, i]) for a in range(4) for b in range(a + 1, 4) for i in range(16))
    assert same < 10  # independently augmented views (of 96 pairs)


def test_imagefolder_is_refused_in_one_line():
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, ["data.dataset=imagefolder", "data.root=/data", "data.backend=tensor"])
    assert str(excinfo.value) == (
        "data.backend=tensor holds in-memory data sets only; use torch or dali for imagefolder"
    )


def test_resized_crop_is_refused():
    cfg = load_config(None, ["data.crop=resized"])
    with pytest.raises(ConfigError, match=r"does not do data\.crop=resized"):
        TensorTrainLoader(pixel_images(8, 4), recipe_for(cfg.data), LoaderOptions(2))


def test_assemble_and_swap_bn_recompute_use_it():
    """The run's loader builder returns the tensor loader (views made by it, not the dataset); SWAP's BN
    recompute takes unaugmented batches from it, equal to the torch backend's."""
    overrides = [*TINY, "data.backend=tensor", "augment.copies=2", "swap.bn_recompute_batches=3"]
    cfg = load_config(None, overrides)
    ctx = DistContext(1, 2, 1, torch.device("cpu"), "gloo")
    assert training_copies(cfg) == 1
    data = build_datasets(cfg.data, copies=training_copies(cfg))
    loader = build_training_loader(cfg, ctx, data, 16)
    assert isinstance(loader, TensorTrainLoader) and loader.steps_per_epoch == 512 // 32
    images, labels = next(iter(loader.epoch(0)))
    assert images.shape == (32, 3, 32, 32) and torch.equal(labels[:16], labels[16:])
    plain = build_datasets(unaugmented(cfg).data)
    ours = list(bn_recompute_batches(cfg, ctx, plain))
    reference = load_config(None, [*overrides[:-3], "swap.bn_recompute_batches=3"])
    theirs = list(bn_recompute_batches(reference, ctx, plain))
    assert len(ours) == len(theirs) == 3
    for (images, labels), (want_images, want_labels) in zip(ours, theirs, strict=True):
        assert torch.equal(labels, want_labels)
        torch.testing.assert_close(images, want_images, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_training_run_with_the_tensor_backend(tmp_path):
    """A real (1-process, CPU) run with data.backend=tensor and M = 2 learns and validates."""
    args = ["train", *TINY, "train.epochs=4", "schedule.milestones=[3]", "data.backend=tensor", "augment.copies=2"]
    assert_ok(run_cli([*args, f"out_dir={tmp_path}", "name=t"]))
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["steps"] == 4 * 512 // 32 and summary["val_acc"] >= 0.3  # chance is 0.1 (0.46 measured)


@pytest.mark.parametrize(
    ("overrides", "backend"),
    [
        ([], "tensor"),
        (["data.dataset=cifar10", "data.root=/data"], "tensor"),
        (["data.dataset=fashion_mnist", "data.root=/data"], "tensor"),
        (["data.dataset=imagefolder", "data.root=/data"], "torch"),
        (["data.dataset=webdataset", "data.root=/data"], "torch"),
        (["data.crop=resized"], "torch"),
        (["data.backend=dali"], "dali"),
        (["data.backend=torch"], "torch"),
    ],
)
def test_auto_backend_is_the_tensor_loader_for_in_memory_sets(overrides, backend):
    """On a GPU and a CPU alike (bench/peers.py: the DataLoader's per-sample work costs a CPU run 7-37 %)."""
    cfg = load_config(None, overrides)
    resolve_data_backend(cfg)
    assert cfg.data.backend == backend


@pytest.mark.slow
def test_a_run_records_the_backend_auto_chose(tmp_path):
    """The default (auto) on this CPU trains the synthetic set with the tensor loader, and config.yaml says so."""
    assert load_config(None, []).data.backend == "auto"
    assert_ok(run_cli(["train", *TINY, "train.epochs=1", f"out_dir={tmp_path}", "name=a"]))
    assert "backend: tensor" in (tmp_path / "a" / "config.yaml").read_text()
