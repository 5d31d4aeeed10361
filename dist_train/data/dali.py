"""The DALI training loader: the torch backend's batches, made by NVIDIA DALI pipelines.

In-memory datasets (CIFAR, MNIST, synthetic) enter through ``external_source``;
ImageFolder trees through DALI's file reader, decoded once per sample (on the
GPU with ``device="mixed"`` when there is one). The M views of batch
augmentation are M random crops/flips of that one decoded image. Without CUDA
the pipeline runs CPU operators only (``device_id=None``).

Sample order is the torch backend's: each epoch's micro-batches come from the same
:class:`~dist_train.data.loader.BatchOrder` (sharded by global rank and world size,
reshuffled with a seed that depends on the epoch, every rank the same number of
steps, per epoch or across epoch boundaries), so ``data.backend: torch | dali``
changes the augmentation draws and nothing else.
Evaluation uses the torch loader.

An epoch may start at any micro-batch (``epoch(e, start=k)``, a resume from a mid-epoch
checkpoint): the pipeline then reads only the files (or arrays) from there on. It stays exact
because pipelines are reseeded where checkpoints may fall (``LoaderOptions.reseed_every``): the
uninterrupted run starts a new pipeline at each of those micro-batches, with a seed that depends
only on the epoch and the position, and the resumed run starts its first one there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dist_train.data.arrays import TensorImageDataset
from dist_train.data.imagefolder import ImageFileDataset
from dist_train.data.loader import LoaderOptions, batch_seed, epoch_seed
from dist_train.data.transforms import Recipe
from dist_train.data.views import arrange_views
from dist_train.errors import ConfigError

INSTALL_HINT = "data.backend=dali needs NVIDIA DALI, which is not installed: pip install -e '.[dali]'"


def import_dali() -> Any:
    """The ``nvidia.dali`` package, or a one-line ConfigError telling how to install it."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # the iterator lives here
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return nvidia.dali


class _IndexedArrays:
    """external_source input: each call returns the next batch (images NHWC uint8, labels) of this epoch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batches: list[np.ndarray]) -> None:
        self.images, self.labels, self.batches = images, labels, batches

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in self.batches:
            yield self.images[batch], self.labels[batch]


def _augment(dali: Any, images: Any, recipe: Recipe, size: int, device: str) -> Any:
    """One random view: crop as the recipe says, flip, normalise to float32 CHW."""
    fn, types = dali.fn, dali.types
    if recipe.crop == "pad":
        # Whole-pixel offsets, each of -pad..pad equally likely (as torchvision's RandomCrop(padding=pad)).
        offsets = [float(v) for v in range(-recipe.pad, recipe.pad + 1)]
        anchor = fn.cast(fn.random.uniform(values=offsets, shape=[2]), dtype=types.INT32)
        images = fn.slice(images, anchor, [size, size], axis_names="HW", out_of_bounds_policy="pad", device=device)
    elif recipe.crop == "resized":
        images = fn.random_resized_crop(images, size=[size, size], device=device)
    crop = {}
    if recipe.crop == "none" and recipe.resize_eval:  # images of many sizes, unaugmented: the evaluation view
        images = fn.resize(images, resize_shorter=int(size * 256 / 224), device=device)
        crop = {"crop": [size, size]}  # centred
    images = fn.crop_mirror_normalize(
        images,
        **crop,
        mirror=fn.random.coin_flip() if recipe.flip else 0,
        mean=[255 * m for m in recipe.mean],
        std=[255 * s for s in recipe.std],
        dtype=types.FLOAT,
        output_layout="CHW",
        device=device,
    )
    if recipe.cutout:  # a square at a uniformly random centre, clipped at the borders (fn.erase clips)
        centre = fn.random.uniform(values=[float(v) for v in range(size)], shape=[2])
        images = fn.erase(
            images,
            anchor=centre - float(recipe.cutout // 2),
            shape=[float(recipe.cutout)] * 2,
            axis_names="HW",
            fill_value=0.0,
            device=device,
        )
    return images


@dataclass
class DaliTrainLoader:
    """Same contract as :class:`~dist_train.data.loader.TrainLoader`: ``epoch(e, start)`` yields the
    micro-batches."""

    dataset: Dataset
    recipe: Recipe
    image_size: int
    options: LoaderOptions

    def __post_init__(self) -> None:
        self.dali = import_dali()
        if not isinstance(self.dataset, TensorImageDataset | ImageFileDataset):
            raise ConfigError(f"data.backend=dali cannot read {type(self.dataset).__name__}")
        self.order = self.options.batch_order(len(self.dataset))
        if isinstance(self.dataset, TensorImageDataset):
            arrays = self.dataset.arrays
            self.images = np.ascontiguousarray(arrays.images.permute(0, 2, 3, 1).numpy())  # NHWC for DALI
            self.labels = arrays.labels.numpy().astype(np.int64)

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def steps_in(self, epoch: int) -> int:
        return self.order.steps_in(epoch)

    @property
    def device(self) -> str:
        return "cpu" if self.options.device_id is None else "gpu"

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return [np.asarray(batch, dtype=np.int64) for batch in self.order.micro_batches(epoch)]

    def segments(self, epoch: int, start: int = 0) -> list[tuple[int, int]]:
        """``(first, end)`` micro-batch positions of the pipelines that serve ``epoch`` from ``start``: a new one
        at ``start`` and wherever the run's micro-batch count reaches a multiple of ``reseed_every``."""
        count = self.order.steps_in(epoch) * self.options.grad_accum_steps
        every = self.options.reseed_every
        offset = epoch * self.order.steps_per_epoch * self.options.grad_accum_steps  # the run's micro-batches so far
        cuts = [p for p in range(start + 1, count) if every and (offset + p) % every == 0]
        bounds = [start, *cuts, count]
        return [(a, b) for a, b in pairwise(bounds) if b > a]

    def _seed(self, epoch: int, first: int) -> int:
        options = self.options
        seed = (
            epoch_seed(options.seed, epoch, options.rank)
            if first == 0
            else batch_seed(options.seed, epoch, options.rank, first)
        )
        return seed % 2**31

    def _pipeline(self, batches: list[np.ndarray], seed: int) -> Any:
        dali, fn, types = self.dali, self.dali.fn, self.dali.types
        pipe = dali.Pipeline(
            batch_size=self.options.micro_batch,
            num_threads=max(1, self.options.workers),
            device_id=self.options.device_id,
            seed=seed,
            exec_dynamic=True,
        )
        with pipe:
            if isinstance(self.dataset, ImageFileDataset):
                paths = [self.dataset.samples[i][0] for batch in batches for i in batch]
                labels = [self.dataset.samples[i][1] for batch in batches for i in batch]
                encoded, label = fn.readers.file(files=paths, labels=labels, random_shuffle=False, name="reader")
                decode_on = "mixed" if self.device == "gpu" else "cpu"
                images = fn.decoders.image(encoded, device=decode_on, output_type=types.RGB)
            else:
                images, label = fn.external_source(
                    source=_IndexedArrays(self.images, self.labels, batches),
                    num_outputs=2,
                    batch=True,
                    layout=["HWC", ""],
                )
                if self.device == "gpu":
                    images = images.gpu()
            copies = self.options.copies
            views = [_augment(self.dali, images, self.recipe, self.image_size, self.device) for _ in range(copies)]
            pipe.set_outputs(*views, label)
        return pipe

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of ``epoch`` from ``start`` on; the ones before are neither read nor decoded."""
        batches = self._epoch_batches(epoch)
        for first, end in self.segments(epoch, start):
            yield from self._run(batches[first:end], self._seed(epoch, first))

    def _run(self, batches: list[np.ndarray], seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipe = self._pipeline(batches, seed)
        copies, layout = self.options.copies, self.options.view_layout
        names = [f"view{m}" for m in range(copies)]
        reader = {"reader_name": "reader"} if isinstance(self.dataset, ImageFileDataset) else {}
        iterator = DALIGenericIterator(
            pipe, [*names, "label"], last_batch_policy=LastBatchPolicy.DROP, auto_reset=False, **reader
        )
        for _, outputs in zip(batches, iterator, strict=False):
            data = outputs[0]
            labels = data["label"].reshape(-1).long()
            if copies == 1:
                yield data["view0"], labels
            elif layout == "copy_major":  # the pipeline's outputs are already views 0, 1, ...
                yield torch.cat([data[n] for n in names]), labels.repeat(copies)
            else:
                yield arrange_views(torch.stack([data[n] for n in names], dim=1), labels, layout)
