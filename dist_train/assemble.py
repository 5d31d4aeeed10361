"""Build a Trainer from a config, every rank the same way: checkpoint, data, model, loaders, optimizer, records.

Each builder is small and named for what it builds; :func:`build_trainer` composes them. Every check
comes before any write: :func:`prepare_trainer` builds and checks everything without writing (and
without a collective), and :func:`open_records` writes the run directory once every rank agrees.
``run`` (plain runs) and ``swap`` (the SWAP phases) both build their trainers here; this module
imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_train import checkpoint
from dist_train.callbacks import Callback
from dist_train.config import Config, to_dict, to_yaml
from dist_train.dashboard import describe_run, hosts_table, view_grid
from dist_train.data import DatasetSplits, build_datasets
from dist_train.data.batching import micro_batch_size
from dist_train.data.build import build_training_loader, build_val_loader, training_copies
from dist_train.distributed import DistContext, agree
from dist_train.models import build_model
from dist_train.monitor import Monitor, NullMonitor, check_records
from dist_train.optim import build_optimizer, build_scheduler
from dist_train.regime import format_plan, plan_from_config
from dist_train.resume import find_resume
from dist_train.rundir import History, check_resume, recorded_config, remove_partial_writes, write_config
from dist_train.techniques import RunFacts, build_callbacks
from dist_train.train_state import seed_everything
from dist_train.trainer import Trainer


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
    finished: bool = False
    """The checkpoint ends the run: nothing to train, so config.yaml (and summary.json) stay as they are."""


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


@dataclass
class Resume:
    """The checkpoint a run continues from, read and checked (all None/empty when it starts fresh)."""

    path: Path | None = None
    state: dict[str, Any] | None = None
    lines: tuple[str, ...] = ()
    """What to print about it: changes allowed by on_config_change=continue, notes."""


def read_resume(cfg: Config, ctx: DistContext) -> Resume:
    """The run's checkpoint to resume (``cfg.resume``), loaded safely and checked against this config."""
    run_dir = cfg.run_dir
    path = find_resume(cfg.resume, run_dir / "checkpoints")
    if path is None:  # a fresh start; a run directory that had a checkpoint still says what it trained
        recorded = recorded_config(run_dir)
        if recorded is None:
            return Resume()
        where = "the run (its checkpoint is gone) recorded in"
        check = check_resume(
            to_dict(cfg), {"config": recorded}, run_dir / "config.yaml", ctx.world_size, cfg.on_config_change, where
        )
        return Resume(lines=tuple(f"starting afresh with a changed config: {c}" for c in check.changes))
    state = checkpoint.load(path)
    check = check_resume(to_dict(cfg), state, path, ctx.world_size, cfg.on_config_change)
    lines = [f"continuing with a changed config (on_config_change=continue): {c}" for c in check.changes]
    return Resume(path, state, tuple(lines + check.notes))


def build_network(cfg: Config, ctx: DistContext, data: DatasetSplits) -> nn.Module:
    """The model for ``data``, on the run's device and memory format (the techniques' set-up comes next)."""
    model = build_model(
        cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width, cfg.model.kwargs
    )
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def prepare_trainer(
    cfg: Config,
    ctx: DistContext,
    extra_callbacks: Sequence[Callback] = (),
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> Prepared:
    """Build and check the whole run without writing anything (no collective either)."""
    micro_batch = micro_batch_size(cfg.data.batch_size, ctx.world_size, cfg.train.grad_accum_steps)
    resume = read_resume(cfg, ctx)
    configure_backends(cfg, ctx)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    data = build_datasets(cfg.data, copies=training_copies(cfg))
    model = build_network(cfg, ctx, data)
    train_loader = build_training_loader(cfg, ctx, data, micro_batch)
    plan = plan_from_config(cfg, len(data.train), train_loader.steps_per_epoch)
    train_loader.order.total_steps = plan.total_steps  # the last epoch is partial when the plan says so
    callbacks = build_callbacks(RunFacts(cfg, ctx, plan, micro_batch), extra_callbacks)
    for callback in callbacks:
        callback.setup(model)  # model surgery (Ghost BN), before the optimizer and DDP see the model
    optimizer = build_optimizer(model, cfg.optim, lr=plan.lr)
    scheduler = build_scheduler(optimizer, plan.schedule(cfg.schedule))
    val_loader = build_val_loader(cfg, ctx, data)
    trainer = Trainer(
        cfg,
        ctx,
        model,
        optimizer,
        scheduler,
        train_loader,
        val_loader,
        NullMonitor(),
        cfg.run_dir,
        plan.epochs,
        callbacks,
        loss=partial(F.cross_entropy, label_smoothing=cfg.train.label_smoothing),
    )
    lines, finished = list(resume.lines), False
    if resume.path is not None and resume.state is not None:
        trainer.load_state_dict(resume.state, resume.path)
        lines.insert(0, f"resumed from {resume.path} at epoch {trainer.epoch}, step {trainer.step}")
        finished = trainer.epoch >= trainer.total_epochs or trainer.stop_requested
        if finished:
            lines.append(
                f"the run has finished ({trainer.epoch} of {trainer.total_epochs} epochs): nothing to train; "
                "evaluating it (config.yaml and summary.json are kept)"
            )
    elif initial_weights is not None:
        model.load_state_dict(initial_weights)
    lines.append(describe_run(cfg, ctx, model, data, train_loader, plan))
    resume_step = int(resume.state["step"]) if resume.state else None
    return Prepared(trainer, resume.path, resume_step, lines, format_plan(plan), finished)


def open_records(prepared: Prepared, cfg: Config) -> None:
    """Rank 0, once every rank has passed every check: write config.yaml, rewind the records to the
    checkpoint (what is cut goes to history/), and give the trainer its Monitor."""
    trainer = prepared.trainer
    run_dir = trainer.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    check_records(run_dir)
    leftovers = remove_partial_writes(run_dir)
    history = History(run_dir)
    if not prepared.finished:
        write_config(run_dir, to_yaml(cfg), history)
    monitor = Monitor(run_dir, resume_step=prepared.resume_step, label=trainer.ctx.label)
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
        grid = view_grid(trainer.train_loader, cfg.augment.copies, micro_batch, cfg.augment.layout)
        monitor.image("augment/views", grid)
        monitor.text("config", f"```\n{to_yaml(cfg)}\n```")
        monitor.text("plan", f"```\n{prepared.plan_text}\n```")
    monitor.text("hosts", hosts_table(trainer.ctx), trainer.step)
    monitor.print(prepared.lines[-1])
