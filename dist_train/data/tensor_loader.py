"""The ``tensor`` training loader: a whole in-memory split kept on the training device, augmented a batch at a time.

For data sets that fit in memory (synthetic, CIFAR, MNIST, Fashion-MNIST) the split lives as one uint8
N×C×H×W tensor on the trainer's device (a GPU, or CPU memory). A micro-batch is an index into it, expanded
to the M views of batch augmentation (copy-major or sample-major, as :func:`~dist_train.data.views.arrange_views`
lays them out), then augmented with a few whole-batch tensor ops: pad-crop and horizontal flip as one gather,
normalisation, cutout, with an independent draw for every view. No worker processes, no per-sample Python.

Sample order is the other backends': the micro-batches of :class:`~dist_train.data.loader.BatchOrder`
(sharding, drop-last or batches across epochs). Every micro-batch draws its augmentation from its own
generator seeded with :func:`~dist_train.data.loader.batch_seed` (seed, epoch, rank, position), so
``epoch(e, start=k)`` gives exactly batches k.. of the uninterrupted epoch without computing the ones before,
and the process's global random state is never touched. The epoch's indices go to the device once per epoch;
on CUDA nothing in the loop waits for the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dist_train.data.arrays import TensorImageDataset
from dist_train.data.backends import BACKENDS
from dist_train.data.catalog import IN_MEMORY, Recipe
from dist_train.data.contract import LoaderInputs, TrainLoader
from dist_train.data.loader import BatchOrder, EpochSteps, LoaderOptions, batch_seed
from dist_train.errors import ConfigError

CROPS = BACKENDS["tensor"].crops
"""The training crops it does."""


def held(dataset: Dataset) -> TensorImageDataset:
    """``dataset`` if the tensor backend can hold it (an in-memory data set), else a one-line ConfigError."""
    if not isinstance(dataset, TensorImageDataset):
        raise ConfigError(f"data.backend=tensor needs an in-memory data set ({', '.join(IN_MEMORY)})")
    return dataset


@dataclass
class TensorTrainLoader(EpochSteps):
    """A :class:`~dist_train.data.contract.TrainLoader`: ``epoch(e, start)`` yields the micro-batches,
    (B·M, C, H, W) float32 images and (B·M,) int64 labels, on ``device``."""

    dataset: TensorImageDataset
    recipe: Recipe
    options: LoaderOptions
    device: torch.device | None = None
    """Where the split lives and batches are made; None: ``cuda:{options.device_id}``, or the CPU without one."""

    def __post_init__(self) -> None:
        held(self.dataset)  # a data set given directly is checked too
        if self.recipe.crop not in CROPS:
            raise ConfigError(f"data.backend=tensor does not do data.crop={self.recipe.crop}; use {' or '.join(CROPS)}")
        if self.device is None:
            cuda = self.options.device_id is not None
            self.device = torch.device("cuda", self.options.device_id) if cuda else torch.device("cpu")
        arrays = self.dataset.arrays
        self.images = arrays.images.to(self.device).contiguous()
        self.labels = arrays.labels.to(self.device)
        channels = self.images.shape[1]
        mean = torch.tensor(self.recipe.mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        std = torch.tensor(self.recipe.std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.scale, self.shift = 1 / (255 * std), -mean / std  # (x / 255 - mean) / std as one multiply-add
        self.order: BatchOrder = self.options.batch_order(len(self.dataset))
        self.generator = torch.Generator(device=self.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of ``epoch`` from micro-batch ``start`` on; the ones before are not computed."""
        batches = self.order.micro_batches(epoch)[start:]
        if not batches:
            return
        indices = torch.tensor(batches, dtype=torch.int64)
        if self.device.type == "cuda":  # one asynchronous copy per epoch
            indices = indices.pin_memory()
        indices = indices.to(self.device, non_blocking=True)
        copies = self.options.copies
        if copies > 1:  # each sample's M views, laid out as arrange_views does
            copy_major = self.options.view_layout == "copy_major"
            indices = indices.repeat(1, copies) if copy_major else indices.repeat_interleave(copies, dim=1)
        for offset, index in enumerate(indices):
            yield self.batch(index, batch_seed(self.options.seed, epoch, self.options.rank, start + offset))

    def batch(self, index: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` (one row per view) augmented with draws from ``seed``, and their labels."""
        images = self.images.index_select(0, index)
        recipe = self.recipe
        generator = self.generator.manual_seed(seed)
        pad = recipe.pad if recipe.crop == "pad" else 0
        if pad or recipe.flip:
            images = self._crop_flip(images, pad, generator)
        images = images.to(torch.float32).mul_(self.scale).add_(self.shift)
        if recipe.cutout:
            images = self._cutout(images, recipe.cutout, generator)
        return images, self.labels.index_select(0, index)

    def _crop_flip(self, images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
        """Random whole-pixel shift of -pad..pad in each axis (zero fill, torchvision's RandomCrop(padding=pad)),
        then a flip with probability 1/2: one gather per batch."""
        count, channels, height, width = images.shape
        device = images.device
        corner = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator, device=device)
        across = torch.arange(width, device=device)
        if self.recipe.flip:
            flip = torch.randint(0, 2, (count, 1), generator=generator, device=device) == 1
            across = torch.where(flip, width - 1 - across, across)  # (count, W)
        rows = corner[:, :1] + torch.arange(height, device=device)  # (count, H) rows of the padded image
        cols = corner[:, 1:] + across
        padded_width = width + 2 * pad
        source = (rows[:, :, None] * padded_width + cols[:, None, :]).view(count, 1, height * width)
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        flat = padded.reshape(count, channels, -1)
        return flat.gather(2, source.expand(count, channels, height * width)).view(count, channels, height, width)

    @staticmethod
    def _cutout(images: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
        """Zero a side×side square at a uniformly random centre of each image (clipped at the borders)."""
        count, _, height, width = images.shape
        device = images.device
        top = torch.randint(0, height, (count, 1), generator=generator, device=device) - side // 2
        left = torch.randint(0, width, (count, 1), generator=generator, device=device) - side // 2
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        in_rows = (rows >= top) & (rows < top + side)
        in_cols = (cols >= left) & (cols < left + side)
        return images.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


def train_loader_for(inputs: LoaderInputs, options: LoaderOptions) -> TrainLoader:
    """``data.backend: tensor``'s training loader (its row in :data:`~dist_train.data.backends.BACKENDS`)."""
    recipe = inputs.recipe()
    return TensorTrainLoader(held(inputs.data.train), recipe, options, inputs.device)
