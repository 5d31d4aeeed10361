"""What every loader backend provides: the training and the evaluation loader, and what their builders get.

A backend is one loader module and one row of :data:`~dist_train.data.backends.BACKENDS`. The row names
two builders in the module, a :data:`TrainBuilder` and an :data:`EvalBuilder`; each takes the run's
:class:`LoaderInputs` and this rank's options and returns a :class:`TrainLoader` or an :class:`EvalLoader`.
The trainer, the run's assembly and SWAP's BN recompute use nothing of a loader beyond these two protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from dist_train.config import DataConfig
    from dist_train.data.catalog import Recipe
    from dist_train.data.loader import BatchOrder, EvalOptions, LoaderOptions
    from dist_train.data.splits import DatasetSplits

Batch: TypeAlias = "tuple[torch.Tensor, torch.Tensor]"
"""Images (N, C, H, W) float32, normalised, and their (N,) int64 labels."""


class TrainLoader(Protocol):
    """One rank's training loader: the micro-batches of any epoch, from any micro-batch on."""

    @property
    def order(self) -> BatchOrder:
        """Which samples each micro-batch holds. The run sets ``order.total_steps`` from its plan (the epoch
        that reaches it is partial); ``order.micro_batch`` is the distinct samples per micro-batch."""
        ...

    @property
    def dataset(self) -> Dataset:
        """The training split it reads (its ``classes``, when it has them, name the labels)."""
        ...

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a full epoch."""
        ...

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps in ``epoch``: ``steps_per_epoch``, fewer in the epoch that reaches ``total_steps``."""
        ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The micro-batches of ``epoch`` from micro-batch ``start`` on, ``steps_in(epoch) × grad_accum_steps
        - start`` of them, the ones before neither loaded nor drawn: the same batches as an uninterrupted epoch
        (how a run resumes from a mid-epoch checkpoint). With M views per sample (``augment.copies``) each
        holds B·M images laid out as ``augment.layout`` says."""
        ...


class EvalLoader(Protocol):
    """One rank's validation loader: its unpadded shard (``rank::world_size``) in batches, unaugmented, so that
    metrics summed over the ranks count every image once."""

    def __iter__(self) -> Iterator[Batch]:
        """The shard's batches, in order, each of at most ``ceil(batch_size / world_size)`` images."""
        ...


@dataclass(frozen=True)
class LoaderInputs:
    """What a backend's builders get besides this rank's options: the data set and where training runs."""

    data: DatasetSplits
    """The run's splits, built with the views the backend does not make itself (``training_copies``)."""
    data_config: DataConfig
    device: torch.device
    """The trainer's device."""

    def recipe(self) -> Recipe:
        """How a loader that augments and normalises by itself does it: a plug-in data set's own recipe, else
        the config's (asked only by such loaders)."""
        from dist_train.data.transforms import recipe_for  # torchvision: not for the sample order's users

        return self.data.recipe or recipe_for(self.data_config)


TrainBuilder: TypeAlias = "Callable[[LoaderInputs, LoaderOptions], TrainLoader]"
"""A backend's training-loader builder."""
EvalBuilder: TypeAlias = "Callable[[LoaderInputs, EvalOptions], EvalLoader]"
"""A backend's validation-loader builder."""
