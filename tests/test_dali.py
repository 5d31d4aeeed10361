"""The DALI loaders against torchvision, with real DALI pipelines (CPU operators): the validation pipeline gives
the torch evaluation loader's images, order and shards; the training views are torchvision's crops of the
drawn windows; one pipeline serves every epoch, a resume and an epoch left early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from dist_train.config import DataConfig, load_config
from dist_train.data import build_datasets
from dist_train.data.dali_pipelines import resized_crops
from dist_train.data.loader import LoaderOptions, batch_seed, build_eval_loader
from dist_train.data.transforms import recipe_for

pytestmark = pytest.mark.slow

IMAGENET_STD = 0.224  # the smallest of the ImageFolder recipe's stds
ONE_LEVEL = 1.01 / 255 / IMAGENET_STD  # one uint8 level after normalisation: resamplers may round differently


def varied_tree(root: Path, suffix: str, count: int = 20) -> Path:
    """An ImageFolder tree of ``count`` images of assorted sizes (wide, tall, small, large): smooth colour and
    noise, so that resampling differences would show."""
    rng = np.random.default_rng(1)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(20, 130, 2))
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height))
        pixels = np.asarray(coarse, np.float32) + rng.normal(0, 16, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.{suffix}", quality=90)
    return root


def imagefolder(root: Path, size: int, **fields) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), image_size=size, val_fraction=0.5, **fields)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
@pytest.mark.parametrize("rank", [0, 1])
def test_eval_pipeline_gives_the_torch_eval_images(tmp_path, suffix, rank, dali):
    """Resize(size·256/224) + CenterCrop + normalise: the same images (within one uint8 level), labels, batches
    and shard as the torch evaluation loader, on images of many sizes, on each of 2 ranks; twice (one pipeline)."""
    from dist_train.data.dali import DaliEvalLoader

    cfg = imagefolder(varied_tree(tmp_path, suffix), 24)
    data = build_datasets(cfg)
    dali_loader = DaliEvalLoader(data.val, recipe_for(cfg), data.image_size, 5, rank, world_size=2, threads=2)
    torch_batches = list(build_eval_loader(data.val, 5, rank, 2, 0, False))
    assert len(torch_batches) == len(dali_loader) == 2  # 5 images on each rank: batches of 3 (ceil(5 / 2)) and 2
    for _ in range(2):
        dali_batches = list(dali_loader)
        assert len(dali_batches) == len(torch_batches)
        for (images, labels), (want_images, want_labels) in zip(dali_batches, torch_batches, strict=True):
            assert torch.equal(labels, want_labels)
            assert images.shape == want_images.shape and images.dtype == torch.float32
            torch.testing.assert_close(images, want_images, atol=ONE_LEVEL, rtol=0)
    pipe = dali_loader.runner.pipe
    list(dali_loader)
    assert dali_loader.runner.pipe is pipe


def test_eval_pipeline_normalises_arrays(dali):
    """In-memory arrays: normalisation only, the torch evaluation loader's values to float precision."""
    from dist_train.data.dali import DaliEvalLoader

    cfg = load_config(None, ["data.synthetic_train_size=16", "data.synthetic_val_size=21"])
    data = build_datasets(cfg.data)
    dali_batches = list(DaliEvalLoader(data.val, recipe_for(cfg.data), data.image_size, 8, rank=1, world_size=3))
    torch_batches = list(build_eval_loader(data.val, 8, 1, 3, 0, False))
    assert [len(labels) for _, labels in dali_batches] == [3, 3, 1]  # 7 of 21 images, batches of ceil(8 / 3)
    for (images, labels), (want_images, want_labels) in zip(dali_batches, torch_batches, strict=True):
        assert torch.equal(labels, want_labels)
        torch.testing.assert_close(images, want_images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("decode_per_view", [True, False])
def test_training_views_are_torchvision_crops_of_the_drawn_windows(tmp_path, decode_per_view, dali):
    """Each DALI training view is torchvision's resized_crop (antialiased) of its drawn window, flipped when drawn,
    within one uint8 level, decoded per view from the window (image_slice) or decoded once (resize with a ROI).
    Two pixels from the edge on: at the edges the resampling filters reach past the window, and DALI repeats
    the edge pixel (or, resizing a ROI, reads the image's own pixels there) where torchvision reweights."""
    from dist_train.data.dali import DaliTrainLoader

    cfg = imagefolder(varied_tree(tmp_path, "png"), 24)
    data = build_datasets(cfg)
    recipe = recipe_for(cfg)
    options = LoaderOptions(4, seed=5, copies=2)
    loader = DaliTrainLoader(data.train, recipe, data.image_size, options, decode_per_view=decode_per_view)
    assert loader.graph.slices == decode_per_view
    samples = loader.order.micro_batches(0)[1]
    images, labels = list(loader.epoch(0))[1]
    sizes = np.array([Image.open(data.train.samples[i][0]).size[::-1] for i in samples])
    params = loader.graph.draw(np.random.default_rng(batch_seed(5, 0, 0, 1)), sizes)
    assert labels.tolist() == [data.train.samples[i][1] for i in samples] * 2  # copy-major
    for m in range(2):
        for b, index in enumerate(samples):
            top, left, bottom, right, flip = params[b, m, :5].astype(int).tolist()
            source = torch.from_numpy(np.array(Image.open(data.train.samples[index][0]).convert("RGB")))
            want = F.resized_crop(source.permute(2, 0, 1), top, left, bottom - top, right - left, [24, 24])
            want = F.horizontal_flip(want) if flip else want
            want = F.normalize(want.float() / 255, list(recipe.mean), list(recipe.std))
            view = images[m * 4 + b]
            torch.testing.assert_close(view[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=ONE_LEVEL, rtol=0)
    assert params[:, :, 4].min() == 0 and params[:, :, 4].max() <= 1


def test_resized_crop_windows_follow_torchvision(dali):
    """The drawn windows lie in the image, with torchvision RandomResizedCrop's area share and aspect ratio."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    sizes = np.array([[120, 90], [64, 200], [300, 300], [10, 200]] * 500)
    windows = resized_crops(rng, sizes)
    height, width = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    assert (windows[:, :2] >= 0).all() and (windows[:, 2:] <= sizes).all() and (height >= 1).all()
    share = height * width / sizes.prod(axis=1)
    torch.manual_seed(0)
    want = []
    for h, w in sizes.tolist():
        _, _, crop_h, crop_w = v2.RandomResizedCrop.get_params(torch.empty(1, h, w), (0.08, 1.0), (3 / 4, 4 / 3))
        want.append(crop_h * crop_w / (h * w))
    assert share.mean() == pytest.approx(np.mean(want), abs=0.03)
    square = sizes[:, 0] == 300  # always found in 10 tries: the ratio stays in [3/4, 4/3] up to rounding
    assert (width[square] / height[square]).min() > 0.74 and (width[square] / height[square]).max() < 1.35


def test_one_pipeline_serves_every_epoch(dali):
    """The training pipeline is built once: each epoch reshuffles and redraws, the same epoch gives the same
    batches again, a resumed epoch gives the uninterrupted one's tail, and an epoch left early leaves nothing
    behind for the next one."""
    from dist_train.data.dali import DaliTrainLoader

    cfg = load_config(None, ["data.synthetic_train_size=40", "data.synthetic_val_size=8", "data.cutout=6"])
    data = build_datasets(cfg.data)

    def make() -> DaliTrainLoader:
        options = LoaderOptions(4, seed=2, copies=2, view_layout="sample_major")
        return DaliTrainLoader(data.train, recipe_for(cfg.data), data.image_size, options)

    loader = make()
    first = list(loader.epoch(0))
    pipe = loader.runner.pipe
    second = list(loader.epoch(1))
    assert len(first) == len(second) == 10
    assert not torch.equal(first[0][0], second[0][0])
    again = list(loader.epoch(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    tail = list(loader.epoch(1, start=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, second[7:], strict=True))
    next(iter(loader.epoch(2)))  # left after one batch, with more scheduled
    third = list(loader.epoch(2))
    fresh = list(make().epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(third, fresh, strict=True))
    assert loader.runner.pipe is pipe
    images, labels = first[0]
    assert images.shape == (8, 3, 32, 32) and torch.equal(labels[0::2], labels[1::2])  # sample-major views
    assert images.is_contiguous(memory_format=torch.channels_last)  # as the pipeline wrote them (HWC)
    assert not torch.equal(images[0], images[1])  # each view its own draws


def test_one_epoch_at_a_time(dali):
    """An epoch started while another is being iterated takes the pipeline over: the older one stops with a
    clear error (it cannot take the newer one's batches), and the newer one is whole."""
    from dist_train.data.dali import DaliTrainLoader

    cfg = load_config(None, ["data.synthetic_train_size=40", "data.synthetic_val_size=8"])
    data = build_datasets(cfg.data)
    loader = DaliTrainLoader(data.train, recipe_for(cfg.data), data.image_size, LoaderOptions(4, seed=1))
    want = list(loader.epoch(1))
    older = loader.epoch(0)
    next(older)
    newer = list(loader.epoch(1))
    with pytest.raises(RuntimeError, match="one epoch at a time"):
        next(older)
    del older
    assert all(torch.equal(a[0], b[0]) for a, b in zip(newer, want, strict=True)) and len(newer) == 10
