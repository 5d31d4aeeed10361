"""Data-parallel loaders for the torch backend.

Training uses DistributedSampler (padded so every rank takes the same number
of steps, reshuffled each epoch from ``seed + epoch``); evaluation shards the
validation set without padding so that summed metrics count every image once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dist_train.data.views import arrange_views
from dist_train.errors import ConfigError


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: a disjoint, unpadded shard of the dataset."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's randomness in one epoch (augmentation, dropout)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63)


def micro_batch_size(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Per-process micro-batch: the global batch split over ranks and accumulation steps."""
    parts = world_size * grad_accum_steps
    if batch_size % parts:
        raise ConfigError(
            f"data.batch_size={batch_size} does not divide by world size {world_size} × "
            f"train.grad_accum_steps {grad_accum_steps}"
        )
    return batch_size // parts


@dataclass
class TrainLoader:
    """The training DataLoader plus what the loop needs to know about it."""

    loader: DataLoader
    sampler: DistributedSampler
    seed: int
    rank: int
    steps_per_epoch: int
    grad_accum_steps: int
    view_layout: str = "copy_major"

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of one epoch: ``steps_per_epoch × grad_accum_steps`` of them.

        With batch augmentation the loader yields (B, M, C, H, W) views, laid out here as B·M images.
        """
        self.sampler.set_epoch(epoch)
        self.loader.generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank))
        wanted = self.steps_per_epoch * self.grad_accum_steps
        for index, (images, labels) in enumerate(self.loader):
            if index == wanted:
                break
            yield arrange_views(images, labels, self.view_layout) if images.dim() == 5 else (images, labels)


def build_train_loader(
    dataset: Dataset,
    micro_batch: int,
    grad_accum_steps: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    view_layout: str = "copy_major",
) -> TrainLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    steps = len(sampler) // micro_batch // grad_accum_steps
    if steps == 0:
        raise ConfigError(
            f"the training set ({len(dataset)} images) is smaller than one global batch "
            f"({micro_batch * world_size * grad_accum_steps})"
        )
    loader = DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=False,
    )
    return TrainLoader(loader, sampler, seed, rank, steps, grad_accum_steps, view_layout)


def build_eval_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    per_rank = max(1, -(-batch_size // world_size))
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
