"""Data-parallel loaders for the torch backend, and the sample order both backends follow.

Training draws its micro-batches from :class:`BatchOrder`: per epoch, the
DistributedSampler order (padded so every rank takes the same number of steps,
reshuffled each epoch from ``seed + epoch``, the incomplete last batch dropped),
or one continuous stream of those permutations whose batches straddle epoch
boundaries so that no sample is dropped (``data.cross_epoch_batches``).
Evaluation shards the validation set without padding so that summed metrics
count every image once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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


def steps_per_epoch(length: int, batch_size: int, across_epochs: bool) -> int:
    """Optimizer steps in one epoch of ``length`` samples at global batch ``batch_size`` (one process).

    Per epoch (drop-last) ``length // batch_size``; across epochs the nearest whole number of batches
    to one pass, at least 1 (the stream, not the epoch, decides which samples a batch holds).
    """
    if across_epochs:
        return max(1, (2 * length + batch_size) // (2 * batch_size))
    return length // batch_size


@dataclass
class BatchOrder:
    """Which samples each micro-batch of one rank holds, epoch by epoch; both loader backends follow it.

    Epoch ``e``'s permutation is ``torch.randperm(length)`` seeded with ``seed + e`` (DistributedSampler's).

    * ``across_epochs=False``: each epoch is that permutation, padded to a multiple of the world size,
      sharded ``rank::world_size`` and cut into micro-batches; the incomplete tail is dropped.
    * ``across_epochs=True``: the permutations of epochs 0, 1, 2, ... form one stream; global step
      ``j`` trains on stream positions ``[j·B, (j+1)·B)`` (B the global batch), so a batch may
      straddle two permutations and every sample is used once per pass. Rank r takes positions
      r, r + world_size, ... of the global batch, cut into its ``grad_accum_steps`` micro-batches.
      An epoch is then :func:`steps_per_epoch` steps, about one pass.

    ``total_steps`` (set from the plan) ends training there: the epoch holding it is partial.
    """

    length: int
    micro_batch: int
    grad_accum_steps: int
    rank: int
    world_size: int
    seed: int
    across_epochs: bool = False
    total_steps: int | None = None
    steps_per_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = DistributedSampler(
            range(self.length), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed
        )
        if self.across_epochs:
            steps = steps_per_epoch(self.length, self.global_batch, True) if self.length >= self.global_batch else 0
        else:
            steps = len(self.sampler) // self.micro_batch // self.grad_accum_steps
        if steps == 0:
            raise ConfigError(
                f"the training set ({self.length} images) is smaller than one global batch ({self.global_batch})"
            )
        self.steps_per_epoch = steps

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum_steps * self.world_size

    @property
    def epochs(self) -> int | None:
        """Epochs until ``total_steps`` (the last one may be partial); None without a limit."""
        return None if self.total_steps is None else -(-self.total_steps // self.steps_per_epoch)

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps of ``epoch``: ``steps_per_epoch``, fewer in the epoch that reaches ``total_steps``."""
        if self.total_steps is None:
            return self.steps_per_epoch
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    @property
    def epoch_share_used(self) -> float:
        """Share of each epoch's samples that training uses (1.0 across epochs)."""
        return 1.0 if self.across_epochs else self.steps_per_epoch * self.global_batch / self.length

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))

    def micro_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of ``epoch``, in order: ``steps_in(epoch) × grad_accum_steps`` of them."""
        count = self.steps_in(epoch) * self.grad_accum_steps
        if not self.across_epochs:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            return [order[i * self.micro_batch : (i + 1) * self.micro_batch] for i in range(count)]
        first = epoch * self.steps_per_epoch * self.global_batch  # stream position of this epoch's first sample
        last = first + self.steps_in(epoch) * self.global_batch
        if last == first:
            return []
        passes = range(first // self.length, (last - 1) // self.length + 1)
        stream = torch.cat([self._permutation(p) for p in passes])
        offset = passes[0] * self.length
        batches = stream[first - offset : last - offset].view(-1, self.global_batch)
        mine = batches[:, self.rank :: self.world_size].reshape(count, self.micro_batch)
        return mine.tolist()


class _EpochBatches(Sampler[list[int]]):
    """The DataLoader's batch sampler: the micro-batches of the epoch last set."""

    def __init__(self, order: BatchOrder) -> None:
        self.order = order
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.order.micro_batches(self.epoch))

    def __len__(self) -> int:
        return self.order.steps_in(self.epoch) * self.order.grad_accum_steps


@dataclass
class TrainLoader:
    """The training DataLoader plus what the loop needs to know about it."""

    loader: DataLoader
    order: BatchOrder
    view_layout: str = "copy_major"

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def steps_in(self, epoch: int) -> int:
        return self.order.steps_in(epoch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of one epoch: ``steps_in(epoch) × grad_accum_steps`` of them.

        With batch augmentation the loader yields (B, M, C, H, W) views, laid out here as B·M images.
        """
        self.loader.batch_sampler.epoch = epoch
        self.loader.generator = torch.Generator().manual_seed(epoch_seed(self.order.seed, epoch, self.order.rank))
        for images, labels in self.loader:
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
    across_epochs: bool = False,
) -> TrainLoader:
    order = BatchOrder(len(dataset), micro_batch, grad_accum_steps, rank, world_size, seed, across_epochs)
    loader = DataLoader(
        dataset,
        batch_sampler=_EpochBatches(order),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    return TrainLoader(loader, order, view_layout)


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
