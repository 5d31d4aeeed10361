"""SWAP, Stochastic Weight Averaging in Parallel (Gupta, Akle Serrano & DeCoste, 2020).

Method card
-----------
*Paper.* Three phases: (1) large-batch synchronous data-parallel training
until a stopping criterion (a training accuracy); (2) every worker, or group
of workers, refines its own copy with a small batch and its own data order,
with no communication between them; (3) average the weights of all copies and
recompute the batch-norm statistics of the averaged model (stale statistics
would be wrong for it).

*Code.* ``swap.enabled: true`` runs the three phases inside one torchrun or
SLURM job, each built on the ordinary Trainer:

1. phase 1 is a normal run over all ranks (lr rules, Ghost BN, batch
   augmentation as configured) that stops at ``swap.phase1_train_acc`` or
   ``swap.phase1_max_epochs``; its end is checkpointed as ``checkpoints/phase1.pt``;
2. the world splits into replicas of ``swap.replica_size`` processes
   (``dist.new_group``; default one replica per node); each replica is a
   normal run over its own process group with the ``swap.phase2.*`` batch, lr
   and schedule, its own seed and data order, and its own run directory
   ``phase2/replica<r>/`` (TensorBoard curves and checkpoints per replica);
3. one all-reduce averages the parameters (equal in a replica, so the mean over
   ranks is the mean over replicas); BN statistics are recomputed over
   ``swap.bn_recompute_batches`` training batches (unaugmented, from the run's
   own loader backend, torch or DALI, split over all ranks; 0 = the whole set)
   as the cumulative average of per-batch statistics with the sums reduced over
   all ranks, which equals one process recomputing over the same batches
   (``torch.optim.swa_utils.update_bn``); the averaged model is evaluated next
   to each replica's own accuracy (``summary.json``, TensorBoard ``swap/*``) and
   saved as ``checkpoints/swap_final.pt``. A bounded recompute keeps phase 3
   small at ImageNet scale, where the whole set would be one more epoch.

Every phase resumes exactly after an interruption: phase 1 and each replica
from their own ``last.pt``; phase 3 is recomputed from the replicas' results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dist_train import checkpoint
from dist_train.assemble import build_trainer
from dist_train.config import Config
from dist_train.data import DatasetSplits, build_datasets
from dist_train.data.batching import micro_batch_size
from dist_train.data.build import build_training_loader, build_val_loader
from dist_train.distributed import DistContext, agree, all_gather_objects, all_reduce_sum
from dist_train.errors import ConfigError
from dist_train.evaluate import evaluate
from dist_train.monitor import Monitor
from dist_train.techniques.swap_stop import StopAtTrainAccuracy
from dist_train.trainer import Trainer

PHASE1 = "phase1.pt"
FINAL = "swap_final.pt"


def replica_layout(cfg: Config, world_size: int) -> int:
    """Processes per replica, checked against the world size and the phase-2 batch."""
    size = cfg.swap.replica_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if size < 1 or world_size % size:
        raise ConfigError(f"swap.replica_size={size} does not divide the world size {world_size}")
    if cfg.swap.phase2.batch_size % (size * cfg.train.grad_accum_steps):
        raise ConfigError(
            f"swap.phase2.batch_size={cfg.swap.phase2.batch_size} does not divide by the replica size {size} "
            f"× train.grad_accum_steps {cfg.train.grad_accum_steps}"
        )
    return size


def phase2_config(cfg: Config, replica: int, run_dir: Path) -> Config:
    """A replica's own run: the phase-2 batch, lr and schedule, its own seed and run directory."""
    phase2 = cfg.swap.phase2
    return replace(
        cfg,
        name=f"replica{replica}",
        out_dir=str(run_dir / "phase2"),
        seed=cfg.seed + 1000 * (replica + 1),
        data=replace(cfg.data, batch_size=phase2.batch_size),
        optim=replace(cfg.optim, lr=phase2.lr),
        schedule=replace(
            cfg.schedule, name=phase2.schedule, milestones=[], factors=[], warmup_epochs=0.0, warmup_steps=0
        ),
        regime=replace(cfg.regime, reference_batch_size=0, lr_rule="none", adapt=False),
        train=replace(cfg.train, epochs=phase2.epochs),
        diffusion=replace(cfg.diffusion, every_steps=0),
    )


@torch.no_grad()
def average_parameters(module: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Replace every parameter by its mean over the ranks of ``group``: one all-reduce.

    Copied back in place, so each parameter keeps its memory format (channels_last weights cannot be
    flattened by ``parameters_to_vector``'s ``view``)."""
    params = list(module.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    all_reduce_sum(flat, group)
    flat /= dist.get_world_size(group)
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()


@torch.no_grad()
def recompute_bn(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    device: torch.device,
    group: dist.ProcessGroup | None = None,
    to_device: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    autocast: Callable[[], Any] | None = None,
) -> int:
    """BN running statistics from scratch: the average of per-batch statistics over every rank's batches.

    ``to_device`` and ``autocast`` (the trainer's: memory format, non-blocking copy, bf16) run the forward
    passes as training ran them; by default the images are copied to ``device`` and run in fp32.

    Each rank accumulates a cumulative average over its own batches (momentum None);
    the averages, weighted by their batch counts, are then summed over ``group``. Returns
    the number of batches used in all.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = module.training
    module.train()
    for images, labels in batches:
        if to_device is None:
            module(images.to(device))
            continue
        with autocast() if autocast is not None else nullcontext():
            module(to_device(images, labels)[0])
    # Every forward updates every layer once: one batch count per rank, and one all-reduce for all layers.
    count = float(layers[0].num_batches_tracked) if layers else 0.0
    weighted = [stat.double().flatten() * count for layer in layers for stat in (layer.running_mean, layer.running_var)]
    flat = all_reduce_sum(torch.cat([*weighted, torch.tensor([count], dtype=torch.float64)]).to(device), group).cpu()
    total = int(flat[-1].item())
    offset = 0
    for layer, momentum in zip(layers, momenta, strict=True):
        for stat in (layer.running_mean, layer.running_var):
            stat.copy_(flat[offset : offset + stat.numel()].view_as(stat) / max(total, 1))
            offset += stat.numel()
        layer.num_batches_tracked.fill_(total)
        layer.momentum = momentum
    module.train(was_training)
    return total


def run_phase1(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    """Large-batch DDP over all ranks until the accuracy threshold or the epoch limit; checkpointed at its end."""
    run_dir = cfg.run_dir
    marker = run_dir / "checkpoints" / PHASE1
    if marker.exists():
        return checkpoint.load(marker)
    epochs = cfg.swap.phase1_max_epochs or cfg.train.epochs
    phase1 = replace(cfg, train=replace(cfg.train, epochs=epochs))
    trainer = build_trainer(phase1, ctx, [StopAtTrainAccuracy(cfg.swap.phase1_train_acc)])
    try:
        trainer.monitor.event(trainer.step, "phase", phase=1)
        trainer.monitor.log(trainer.step, {"swap/phase": 1.0})
        summary = trainer.fit()
        reached = trainer.stop_requested
        if reached:
            threshold = cfg.swap.phase1_train_acc
            message = f"SWAP phase 1 reached training accuracy {threshold:.2%} after {trainer.epoch} epochs"
        elif cfg.swap.phase1_train_acc:
            message = (
                f"SWAP phase 1 stopped at its epoch limit ({epochs}) without reaching training accuracy "
                f"{cfg.swap.phase1_train_acc:.2%}"
            )
        else:
            message = f"SWAP phase 1 ended at its epoch limit ({epochs}; no accuracy threshold set)"
        trainer.monitor.print(message)
        state = trainer.state_dict()
        state["phase1"] = {
            "reached_threshold": reached,
            "epochs": trainer.epoch,
            "steps": trainer.step,
            "val_acc": summary["val_acc"],
            "message": message,
        }
        agree(lambda: checkpoint.atomic_save(state, marker) if ctx.is_primary else None)
        return state
    finally:
        trainer.monitor.close()


def replica_groups(world_size: int, replica_size: int, backend: str | None = None) -> list[dist.ProcessGroup | None]:
    """One process group per replica of consecutive ranks (every rank must create all of them)."""
    if world_size == 1:
        return [None]
    starts = range(0, world_size, replica_size)
    return [dist.new_group(list(range(start, start + replica_size)), backend=backend) for start in starts]


def replica_context(
    ctx: DistContext,
    replica_size: int,
    groups: list[dist.ProcessGroup | None],
    host_groups: list[dist.ProcessGroup | None] | None = None,
) -> DistContext:
    """This process's place in its replica (``host_groups``: the replicas' gloo groups, with NCCL)."""
    first, replica = ctx.rank - ctx.rank % replica_size, ctx.rank // replica_size
    return replace(
        ctx,
        rank=ctx.rank % replica_size,
        world_size=replica_size,
        group=groups[replica],
        host_group=host_groups[replica] if host_groups else None,
        hosts=ctx.hosts[first : first + replica_size],
        label=f"replica {replica}",
    )


def run_phase2(cfg: Config, ctx: DistContext, phase1: dict[str, Any], replica_size: int) -> tuple[Trainer, dict]:
    """Each replica trains its own copy from the phase-1 weights; nothing crosses replicas."""
    groups = replica_groups(ctx.world_size, replica_size)
    host_groups = replica_groups(ctx.world_size, replica_size, "gloo") if ctx.backend == "nccl" else None
    replica = ctx.rank // replica_size
    local = replica_context(ctx, replica_size, groups, host_groups)
    own = phase2_config(cfg, replica, cfg.run_dir)
    trainer = build_trainer(own, local, initial_weights=phase1["model"])
    try:
        trainer.monitor.event(trainer.step, "phase", phase=2, replica=replica)
        summary = trainer.fit()
    finally:
        trainer.monitor.close()
    return trainer, {
        "replica": replica,
        "val_acc": summary["val_acc"],
        "val_loss": summary["val_loss"],
        "steps": trainer.step,
    }


def unaugmented(cfg: Config) -> Config:
    """The config of the BN recompute's loader: the run's data and backend, no augmentation, one view,
    batches of the training micro-batch, one shuffled pass."""
    return replace(
        cfg,
        data=replace(cfg.data, augment=False, cross_epoch_batches=False),
        augment=replace(cfg.augment, copies=1),
        train=replace(cfg.train, grad_accum_steps=1),
        checkpoint=replace(cfg.checkpoint, every_steps=0),
    )


def bn_recompute_batches(cfg: Config, ctx: DistContext, data: DatasetSplits) -> Iterable[tuple[torch.Tensor, Any]]:
    """This rank's BN-recompute batches: unaugmented training micro-batches from the run's own loader backend
    (torch with its workers, or DALI), sharded and shuffled like training; ``swap.bn_recompute_batches`` of them
    on every rank (each a micro-batch of the same global batch), or one pass when 0."""
    batch = micro_batch_size(cfg.data.batch_size, ctx.world_size, cfg.train.grad_accum_steps)
    loader = build_training_loader(unaugmented(cfg), ctx, data, batch)
    return islice(loader.epoch(0), cfg.swap.bn_recompute_batches or loader.steps_in(0))


def run_phase3(cfg: Config, ctx: DistContext, trainer: Trainer, replicas: list[dict], phase1: dict) -> dict:
    """Average over replicas, recompute BN over (a bounded number of) training batches, evaluate; rank 0
    reports and saves."""
    module = trainer.module
    average_parameters(module)
    data = build_datasets(unaugmented(cfg).data)
    bn_batches = recompute_bn(
        module, bn_recompute_batches(cfg, ctx, data), ctx.device, to_device=trainer.to_device, autocast=trainer.autocast
    )
    val_loader = build_val_loader(cfg, ctx, data)
    val_loss, val_acc = evaluate(module, val_loader, trainer.to_device, trainer.autocast)
    phase1_info = phase1["phase1"]
    summary = {
        "name": cfg.name,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "phase1": phase1_info,
        "replicas": replicas,
        "replica_mean_val_acc": sum(r["val_acc"] for r in replicas) / len(replicas),
        "bn_recompute_batches": bn_batches // ctx.world_size,  # global batches (each rank saw a slice of each)
        "sequential_steps": phase1_info["steps"] + replicas[0]["steps"],
        "world_size": ctx.world_size,
    }
    agree(lambda: report_phase3(cfg, module, summary) if ctx.is_primary else None)
    return summary


def report_phase3(cfg: Config, module: nn.Module, summary: dict[str, Any]) -> None:
    """Rank 0: save the averaged model, log the phase markers and the result."""
    replicas, val_acc = summary["replicas"], summary["val_acc"]
    step2, step3 = summary["phase1"]["steps"], summary["sequential_steps"]
    run_dir = cfg.run_dir
    final = {"model": module.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 0, "step": step3}
    checkpoint.atomic_save(final, run_dir / "checkpoints" / FINAL)
    monitor = Monitor(run_dir, resume_step=step2)
    try:
        monitor.log(step2, {"swap/phase": 2.0})
        values = {"swap/phase": 3.0, "swap/val_acc_averaged": val_acc, "swap/val_loss_averaged": summary["val_loss"]}
        values |= {f"swap/val_acc_replica{r['replica']}": r["val_acc"] for r in replicas}
        monitor.log(step3, values)
        monitor.event(step3, "end", val_acc=val_acc)
        monitor.print(
            f"SWAP: averaged model val acc {val_acc:.2%} (replicas: "
            + ", ".join(f"{r['val_acc']:.2%}" for r in replicas)
            + f") after {step3} sequential updates"
        )
    finally:
        monitor.close()


def train_swap(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    """The three SWAP phases in this job; returns the summary (also summary.json on rank 0)."""
    replica_size = replica_layout(cfg, ctx.world_size)
    phase1 = run_phase1(cfg, ctx)
    trainer, own = run_phase2(cfg, ctx, phase1, replica_size)
    replicas = [r for r in all_gather_objects(own) if r is not None]
    unique = list({r["replica"]: r for r in replicas}.values())  # one entry per replica
    return run_phase3(cfg, ctx, trainer, unique, phase1)
