"""Assemble a training run from a config: run directory, data, model, optimizer, resume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.utils import make_grid

from dist_train import checkpoint
from dist_train.config import Config, to_dict, to_yaml
from dist_train.data import DatasetSplits, build_datasets
from dist_train.data.loader import TrainLoader, build_eval_loader, build_train_loader, micro_batch_size
from dist_train.data.transforms import recipe_for
from dist_train.diffusion import WeightDistance
from dist_train.distributed import DistContext, agree, distributed
from dist_train.errors import ConfigError
from dist_train.jsonio import write_json
from dist_train.models import build_model
from dist_train.monitor import Monitor, NullMonitor
from dist_train.nn.ghost_bn import convert_to_ghost_bn
from dist_train.optim import build_optimizer, build_scheduler
from dist_train.regime import cross_epoch_batches, format_plan, plan_from_config
from dist_train.rundir import History, RunLock, check_resume, remove_partial_writes, write_config
from dist_train.trainer import Callback, Trainer, seed_everything


def configure_backends(cfg: Config, ctx: DistContext) -> None:
    if cfg.train.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass
class Prepared:
    """A Trainer that has passed every check, and what rank 0 will say and write about it."""

    trainer: Trainer
    resumed_from: Path | None
    resume_step: int | None
    lines: list[str]
    """What to print once the run directory is open (resume, allowed changes, notes)."""
    plan_text: str


def build_trainer(
    cfg: Config,
    ctx: DistContext,
    extra_callbacks: Sequence[Callback] = (),
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """Everything a Trainer needs, on every rank of ``ctx``; a collective.

    Every rank first checks everything (the checkpoint and its config against this run's, the
    data, the model, the fit of the checkpoint); only when all ranks agree does rank 0 write to
    the run directory (config.yaml, records rewound to the checkpoint). So a refused command
    leaves the run directory as it was. ``initial_weights`` (a model state_dict) start a run
    that has no checkpoint to resume.
    """
    prepared = agree(lambda: prepare_trainer(cfg, ctx, extra_callbacks, initial_weights), ctx.group)
    agree(lambda: open_records(prepared, cfg) if ctx.is_primary else None, ctx.group)
    return prepared.trainer


def prepare_trainer(
    cfg: Config,
    ctx: DistContext,
    extra_callbacks: Sequence[Callback] = (),
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> Prepared:
    """Build and check the whole run without writing anything (no collective either)."""
    micro_batch = micro_batch_size(cfg.data.batch_size, ctx.world_size, cfg.train.grad_accum_steps)
    run_dir = Path(cfg.out_dir) / cfg.name
    resume_from = checkpoint.find_resume(cfg.resume, run_dir / "checkpoints")
    state = checkpoint.load(resume_from) if resume_from else None
    lines: list[str] = []
    if state is not None:
        check = check_resume(to_dict(cfg), state, resume_from, ctx.world_size, cfg.on_config_change)
        lines += [f"continuing with a changed config (on_config_change=continue): {c}" for c in check.changes]
        lines += check.notes
    configure_backends(cfg, ctx)
    seed_everything(cfg.seed)  # the same initial weights on every rank

    data = build_datasets(cfg.data, copies=cfg.augment.copies if cfg.data.backend == "torch" else 1)
    model = build_model(cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width)
    apply_ghost_bn(model, cfg.bn.ghost_batch_size, micro_batch * cfg.augment.copies)
    model = model.to(ctx.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)

    pin = ctx.device.type == "cuda"
    train_loader = make_train_loader(cfg, ctx, data, micro_batch)
    eval_batch = cfg.data.eval_batch_size or cfg.data.batch_size
    val_loader = build_eval_loader(data.val, eval_batch, ctx.rank, ctx.world_size, cfg.data.num_workers, pin)
    plan = plan_from_config(cfg, len(data.train), train_loader.steps_per_epoch)
    train_loader.order.total_steps = plan.total_steps  # the last epoch is partial when the plan says so
    optimizer = build_optimizer(model, cfg.optim, lr=plan.lr)
    scheduler = build_scheduler(optimizer, plan.schedule(cfg.schedule))
    callbacks: list[Callback] = list(extra_callbacks)
    if cfg.diffusion.every_steps:
        fit_until = cfg.diffusion.fit_until_step or (plan.milestone_steps or (plan.total_steps,))[0]
        callbacks.append(WeightDistance(model, cfg.diffusion.every_steps, fit_until))

    trainer = Trainer(
        cfg, ctx, model, optimizer, scheduler, train_loader, val_loader, NullMonitor(), run_dir, plan.epochs, callbacks
    )
    if state is not None:
        trainer.load_state_dict(state, resume_from)
        lines.insert(0, f"resumed from {resume_from} at epoch {trainer.epoch}, step {trainer.step}")
        if trainer.epoch >= trainer.total_epochs or trainer.stop_requested:
            lines.append(f"the run has finished ({trainer.epoch} of {trainer.total_epochs} epochs): nothing to train")
    elif initial_weights is not None:
        model.load_state_dict(initial_weights)
    parameters = sum(p.numel() for p in model.parameters())
    hosts = sorted(set(ctx.hosts))
    on_hosts = f"{len(hosts)} hosts ({', '.join(hosts[:4])}{', ...' * (len(hosts) > 4)}) | " if len(hosts) > 1 else ""
    lines.append(
        f"run {run_dir} | {ctx.world_size} process(es), {ctx.backend} on {ctx.device.type} | {on_hosts}"
        f"{cfg.model.name} ({parameters / 1e6:.2f}M params) | {len(data.train)} train / {len(data.val)} val | "
        f"batch {cfg.data.batch_size} ({micro_batch}/process × {cfg.train.grad_accum_steps} accum) | "
        f"{plan.epochs} epochs × {train_loader.steps_per_epoch} steps | lr {plan.lr:.4g}"
        + (f" | ghost BN {cfg.bn.ghost_batch_size}" if cfg.bn.ghost_batch_size else "")
    )
    return Prepared(trainer, resume_from, int(state["step"]) if state else None, lines, format_plan(plan))


def open_records(prepared: Prepared, cfg: Config) -> None:
    """Rank 0, once every rank has passed every check: write config.yaml, rewind the records to the
    checkpoint (what is cut goes to history/), and give the trainer its Monitor."""
    trainer = prepared.trainer
    run_dir = trainer.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    leftovers = remove_partial_writes(run_dir)
    history = History(run_dir)
    write_config(run_dir, to_yaml(cfg), history)
    monitor = Monitor(run_dir, resume_step=prepared.resume_step)
    trainer.monitor = monitor
    if leftovers:
        monitor.print(f"removed {len(leftovers)} unfinished write(s) of a killed process: {leftovers[0].name}, ...")
    if monitor.moved_aside:
        monitor.print(f"{monitor.moved_aside} record(s) after the checkpoint moved to {monitor.history.folder}")
    for line in prepared.lines[:-1]:
        monitor.print(line)
    monitor.event(
        trainer.step,
        "start",
        resumed_from=str(prepared.resumed_from) if prepared.resumed_from else None,
        restarts=trainer.ctx.restarts,
        world_size=trainer.ctx.world_size,
        hosts=list(trainer.ctx.hosts),
        backend=trainer.ctx.backend,
        device=str(trainer.ctx.device),
        parameters=sum(p.numel() for p in trainer.module.parameters()),
        steps_per_epoch=trainer.train_loader.steps_per_epoch,
    )
    if prepared.resume_step is None:
        micro_batch = micro_batch_size(cfg.data.batch_size, trainer.ctx.world_size, cfg.train.grad_accum_steps)
        grid, rows = view_grid(trainer.train_loader, cfg.augment.copies, micro_batch, cfg.augment.layout)
        monitor.image("augment/views", grid)
        monitor.text("augment/views", rows)
        monitor.text("config", f"```\n{to_yaml(cfg)}\n```")
        monitor.text("plan", f"```\n{prepared.plan_text}\n```")
    monitor.print(prepared.lines[-1])


def make_train_loader(cfg: Config, ctx: DistContext, data: DatasetSplits, micro_batch: int) -> TrainLoader:
    """The training loader of ``data.backend``: torch DataLoader or DALI pipelines, one contract."""
    if cfg.data.backend == "dali":
        from dist_train.data.dali import DaliTrainLoader

        return DaliTrainLoader(  # type: ignore[return-value]
            data.train,
            recipe_for(cfg.data),
            data.image_size,
            micro_batch,
            cfg.train.grad_accum_steps,
            cfg.augment.copies,
            cfg.augment.layout,
            ctx.rank,
            ctx.world_size,
            cfg.seed,
            max(1, cfg.data.num_workers),
            ctx.device.index if ctx.device.type == "cuda" else None,
            cross_epoch_batches(cfg),
        )
    return build_train_loader(
        data.train,
        micro_batch,
        cfg.train.grad_accum_steps,
        ctx.rank,
        ctx.world_size,
        cfg.seed,
        cfg.data.num_workers,
        ctx.device.type == "cuda",
        cfg.augment.layout,
        cross_epoch_batches(cfg),
    )


def view_grid(
    loader: TrainLoader, copies: int, micro_batch: int, layout: str, samples: int = 8
) -> tuple[torch.Tensor, str]:
    """A picture of the training input (a row per sample, its ``copies`` augmented views side by side)
    and its caption: the class name of each row."""
    images, labels = next(iter(loader.epoch(0)))
    images = images.float().cpu()
    index = torch.arange(copies * min(samples, micro_batch)).view(-1, copies)  # sample-major positions
    if layout == "copy_major":
        sample, view = index // copies, index % copies
        index = view * micro_batch + sample
    picked = images[index.reshape(-1)]
    low, high = picked.amin(dim=(1, 2, 3), keepdim=True), picked.amax(dim=(1, 2, 3), keepdim=True)
    grid = make_grid((picked - low) / (high - low).clamp(min=1e-6), nrow=copies, padding=1)
    names = getattr(loader.dataset, "classes", ())
    rows = [int(labels[i]) for i in index[:, 0].tolist()]
    caption = ", ".join(names[r] if r < len(names) else str(r) for r in rows)
    return grid, f"rows, top to bottom: {caption}"


def apply_ghost_bn(model: nn.Module, ghost_batch_size: int, micro_batch: int) -> None:
    """Swap the model's BatchNorms for Ghost BN, checking the ghost fits the per-process batch."""
    if not ghost_batch_size:
        return
    if ghost_batch_size > micro_batch:
        raise ConfigError(
            f"bn.ghost_batch_size={ghost_batch_size} is larger than the per-process batch {micro_batch} "
            "(data.batch_size / world size / train.grad_accum_steps)"
        )
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ConfigError("bn.ghost_batch_size is set but the model has no BatchNorm layer")
    convert_to_ghost_bn(model, ghost_batch_size)


def hparams_of(cfg: Config, world_size: int) -> dict[str, Any]:
    """The hyper-parameters shown in TensorBoard's HPARAMS tab."""
    return {
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "batch_size": cfg.data.batch_size,
        "world_size": world_size,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "schedule": cfg.schedule.name,
        "epochs": cfg.train.epochs,
        "reference_batch_size": cfg.regime.reference_batch_size,
        "lr_rule": cfg.regime.lr_rule,
        "regime_adaptation": cfg.regime.adapt,
        "ghost_batch_size": cfg.bn.ghost_batch_size,
        "augment_copies": cfg.augment.copies,
        "data_backend": cfg.data.backend,
        "grad_clip_norm": cfg.train.grad_clip_norm,
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "precision": cfg.train.precision,
        "seed": cfg.seed,
    }


def train(cfg: Config) -> dict[str, Any]:
    """Run (or continue) one training run inside the process group the environment describes.

    Rank 0 holds the run directory's lock (see :mod:`dist_train.rundir`) from start to end.
    """
    with distributed(cfg.device, cfg.dist.backend, cfg.dist.timeout_s) as ctx:
        run_dir = Path(cfg.out_dir) / cfg.name
        lock = agree(lambda: RunLock.acquire(run_dir) if ctx.is_primary else None, undo=release)
        try:
            if lock is not None and lock.note:
                print(lock.note, flush=True)
            return _swap_run(cfg, ctx) if cfg.swap.enabled else _plain_run(cfg, ctx)
        finally:
            release(lock)


def release(lock: RunLock | None) -> None:
    if lock is not None:
        lock.release()


def _swap_run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    from dist_train.swap import train_swap

    summary = train_swap(cfg, ctx)
    if ctx.is_primary:
        write_json(Path(cfg.out_dir) / cfg.name / "summary.json", {**summary, "config": to_dict(cfg)})
    return summary


def _plain_run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    trainer = build_trainer(cfg, ctx)
    try:
        summary = trainer.fit()
        summary |= {
            "lr_planned": trainer.optimizer.param_groups[0]["initial_lr"],
            "planned_epochs": trainer.total_epochs,
        }
        if ctx.is_primary:
            summary["config"] = to_dict(cfg)
            write_json(trainer.run_dir / "summary.json", summary)
            trainer.monitor.hparams(
                hparams_of(cfg, ctx.world_size), {"val/acc": summary["val_acc"], "val/loss": summary["val_loss"]}
            )
            trainer.monitor.event(trainer.step, "end", val_acc=summary["val_acc"], steps=trainer.step)
            trainer.monitor.print(
                f"done: val acc {summary['val_acc']:.2%} after {trainer.step} steps "
                f"in {summary['train_seconds']:.1f}s; run directory {trainer.run_dir}"
            )
        return summary
    finally:
        trainer.monitor.close()
