"""Data-parallel loaders for the torch backend, and the sample order and options every backend follows.

Training draws its micro-batches from :class:`BatchOrder`: per epoch, the
DistributedSampler order (padded so every rank takes the same number of steps,
reshuffled each epoch from ``seed + epoch``, the incomplete last batch dropped),
or one continuous stream of those permutations whose batches straddle epoch
boundaries so that no sample is dropped (``data.cross_epoch_batches``).
Evaluation shards the validation set without padding so that summed metrics
count every image once.

Every backend's training loader takes a :class:`LoaderOptions` and can start an epoch at any
micro-batch (``epoch(e, start=k)``, see :class:`~dist_train.data.contract.TrainLoader`) without
loading the ones before it, which is how a run resumes from a mid-epoch checkpoint. That stays exact
because a batch's augmentation never depends on the batches before it in a way a checkpoint cannot
restore: in the main process the random stream is the process's own (the checkpoint keeps it); in
DataLoader workers every batch draws from its own seed (:func:`batch_seed`), and so do DALI's and the
tensor backend's per-batch random parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from dist_train.data.batching import steps_per_epoch
from dist_train.data.contract import EvalLoader, LoaderInputs, TrainLoader
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


def batch_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed of one micro-batch's augmentation (at ``position`` in the rank's epoch) in a loader worker."""
    return (epoch_seed(seed, epoch, rank) * 1_000_033 + position * 7_919 + 1) % (2**63)


@dataclass(frozen=True)
class LoaderOptions:
    """How a training loader serves one rank: the same options for every backend."""

    micro_batch: int
    """Distinct samples per micro-batch on this rank."""
    grad_accum_steps: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    workers: int = 0
    """torch: DataLoader worker processes (0: load in this process); DALI: pipeline threads (at least 1)."""
    pin_memory: bool = False
    view_layout: str = "copy_major"
    """How the M views of batch augmentation are laid out (``copy_major`` or ``sample_major``)."""
    across_epochs: bool = False
    """Batches straddle epoch boundaries (:class:`BatchOrder`)."""
    copies: int = 1
    """DALI and tensor: views made per sample (the torch backend's dataset makes its own views)."""
    device_id: int | None = None
    """DALI: the GPU that runs the pipelines; None: CPU operators."""

    def batch_order(self, length: int) -> BatchOrder:
        return BatchOrder(
            length, self.micro_batch, self.grad_accum_steps, self.rank, self.world_size, self.seed, self.across_epochs
        )


@dataclass(frozen=True)
class EvalOptions:
    """How a validation loader serves one rank: an unpadded shard ``rank::world_size``, in batches."""

    batch_size: int
    """The global evaluation batch: each rank's batches hold ``ceil(batch_size / world_size)`` images."""
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    """torch: DataLoader worker processes; DALI: pipeline threads (at least 1)."""
    pin_memory: bool = False
    device_id: int | None = None
    """DALI: the GPU that runs the pipeline; None: CPU operators."""


def step_batches(loader: TrainLoader, epoch: int, accum: int, done: int = 0) -> Iterator[list[Any]]:
    """``loader``'s micro-batches of ``epoch``, a step's worth (``accum``) at a time, after the first ``done``
    steps (which are skipped without being loaded)."""
    batches = loader.epoch(epoch, start=done * accum)
    while group := list(islice(batches, accum)):
        yield group


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


class _EpochBatches(Sampler[list[tuple[int, int]]]):
    """The DataLoader's batch sampler: the micro-batches of the epoch last set, from ``start`` on, each
    index paired with its batch's seed (see :class:`_SeededBatches`)."""

    def __init__(self, order: BatchOrder) -> None:
        self.order = order
        self.epoch = 0
        self.start = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.order.micro_batches(self.epoch)
        for position in range(self.start, len(batches)):
            seed = batch_seed(self.order.seed, self.epoch, self.order.rank, position)
            yield [(seed, index) for index in batches[position]]

    def __len__(self) -> int:
        return max(0, self.order.steps_in(self.epoch) * self.order.grad_accum_steps - self.start)


class _SeededBatches(Dataset):
    """The dataset, fetched a micro-batch at a time; in a DataLoader worker each batch first seeds the
    worker's random stream with its own seed, so its augmentation does not depend on which worker made it
    or on what that worker made before (a resumed epoch skips batches without changing the rest)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.dataset[item[1]]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        if items and get_worker_info() is not None:
            torch.manual_seed(items[0][0])
        return [self.dataset[index] for _, index in items]


class EpochSteps:
    """Steps per epoch from a loader's :class:`BatchOrder` (``self.order``): shared by the training loaders."""

    order: BatchOrder

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def steps_in(self, epoch: int) -> int:
        return self.order.steps_in(epoch)


@dataclass
class TorchTrainLoader(EpochSteps):
    """The torch backend's :class:`~dist_train.data.contract.TrainLoader`: a DataLoader over its batch order."""

    loader: DataLoader
    order: BatchOrder
    dataset: Dataset
    view_layout: str = "copy_major"

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of one epoch from micro-batch ``start`` on (the ones before are not loaded):
        ``steps_in(epoch) × grad_accum_steps - start`` of them.

        With batch augmentation the loader yields (B, M, C, H, W) views, laid out here as B·M images.
        """
        sampler = self.loader.batch_sampler
        sampler.epoch, sampler.start = epoch, start
        self.loader.generator = torch.Generator().manual_seed(epoch_seed(self.order.seed, epoch, self.order.rank))
        for images, labels in self.loader:
            if images.dim() == 5:
                images, labels = arrange_views(images, labels, self.view_layout)
                if self.loader.pin_memory:  # the arranged copy is not pinned: pin it for a non-blocking copy
                    images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels


def build_train_loader(dataset: Dataset, options: LoaderOptions) -> TorchTrainLoader:
    """The torch backend's training loader of ``dataset`` (which makes its own views, if any)."""
    order = options.batch_order(len(dataset))  # type: ignore[arg-type]
    loader = DataLoader(
        _SeededBatches(dataset),
        batch_sampler=_EpochBatches(order),
        num_workers=options.workers,
        pin_memory=options.pin_memory,
        persistent_workers=False,
    )
    return TorchTrainLoader(loader, order, dataset, options.view_layout)


def build_eval_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """The torch backend's validation loader: ``dataset``'s shard ``rank::world_size``, unpadded, in batches of
    ``ceil(batch_size / world_size)``."""
    per_rank = max(1, -(-batch_size // world_size))
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def train_loader_for(inputs: LoaderInputs, options: LoaderOptions) -> TrainLoader:
    """``data.backend: torch``'s training loader (its row in :data:`~dist_train.data.backends.BACKENDS`)."""
    return build_train_loader(inputs.data.train, options)


def eval_loader_for(inputs: LoaderInputs, options: EvalOptions) -> EvalLoader:
    """The torch DataLoader's validation loader (the torch and the tensor backend's)."""
    return build_eval_loader(
        inputs.data.val, options.batch_size, options.rank, options.world_size, options.workers, options.pin_memory
    )
