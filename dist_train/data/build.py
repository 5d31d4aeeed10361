"""A run's loaders from its config, through the backends table: ``data.backend`` picks the row, the row the builders.

Nothing here names a backend's loader: :func:`build_training_loader` and :func:`build_val_loader` call the
builders of ``data.backend``'s row in :data:`~dist_train.data.backends.BACKENDS` with this rank's options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dist_train.data.backends import BACKENDS, backend_for
from dist_train.data.catalog import IN_MEMORY
from dist_train.data.contract import EvalLoader, LoaderInputs, TrainLoader
from dist_train.data.loader import EvalOptions, LoaderOptions
from dist_train.data.transforms import recipe_for
from dist_train.regime import cross_epoch_batches

if TYPE_CHECKING:
    import torch

    from dist_train.config import Config
    from dist_train.data.splits import DatasetSplits
    from dist_train.distributed import DistContext


def cuda_index(device: torch.device) -> int | None:
    """The GPU a loader's pipelines run on; None off CUDA."""
    return device.index if device.type == "cuda" else None


def loader_options(cfg: Config, ctx: DistContext, micro_batch: int) -> LoaderOptions:
    """How this rank's training loader cuts, shards and seeds the data (every backend)."""
    return LoaderOptions(
        micro_batch=micro_batch,
        grad_accum_steps=cfg.train.grad_accum_steps,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=cfg.seed,
        workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
        view_layout=cfg.augment.layout,
        across_epochs=cross_epoch_batches(cfg),
        copies=cfg.augment.copies,
        device_id=cuda_index(ctx.device),
    )


def resolve_data_backend(cfg: Config) -> None:
    """Make ``data.backend: auto`` concrete for this run: the tensor loader for an in-memory data set whose crop
    it does (the whole split on the training device, augmented a batch at a time, no loader workers), the torch
    DataLoader otherwise. On a CPU too: there the DataLoader's per-sample transforms in worker processes take
    cores from the training processes (``bench/peers.py``: 0.63-0.93x a plain loop, the tensor loader 1.02-1.05x
    on 2 cores at 1, 2 and 4 ranks)."""
    if cfg.data.backend != "auto":
        return
    in_memory = cfg.data.dataset in IN_MEMORY and recipe_for(cfg.data).crop in BACKENDS["tensor"].crops
    cfg.data.backend = "tensor" if in_memory else "torch"


def training_copies(cfg: Config) -> int:
    """Views per sample the dataset itself makes: batch augmentation's, unless the backend makes its own."""
    return 1 if backend_for(cfg.data.backend).makes_own_views else cfg.augment.copies


def build_training_loader(cfg: Config, ctx: DistContext, data: DatasetSplits, micro_batch: int) -> TrainLoader:
    """The training loader of ``data.backend``.

    ``data`` must come from ``build_datasets(cfg.data, copies=training_copies(cfg))``: the data set makes the
    views a backend does not make itself.
    """
    options = loader_options(cfg, ctx, micro_batch)
    builder = backend_for(cfg.data.backend).train_builder()
    return builder(LoaderInputs(data, cfg.data, ctx.device), options)


def build_val_loader(cfg: Config, ctx: DistContext, data: DatasetSplits) -> EvalLoader:
    """The validation loader of ``data.backend``: every backend's gives the same images, shards and batches."""
    options = EvalOptions(
        cfg.data.eval_batch_size or cfg.data.batch_size,
        ctx.rank,
        ctx.world_size,
        cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
        device_id=cuda_index(ctx.device),
    )
    builder = backend_for(cfg.data.backend).eval_builder()
    return builder(LoaderInputs(data, cfg.data, ctx.device), options)
