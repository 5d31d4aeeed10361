"""Assemble a training run from a config: run directory, data, model, optimizer, resume."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed import ProcessGroup
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.utils import make_grid

from dist_train import checkpoint
from dist_train.config import Config, to_dict, to_yaml
from dist_train.data import DatasetSplits, build_datasets
from dist_train.data.loader import TrainLoader, build_eval_loader, build_train_loader, micro_batch_size
from dist_train.data.transforms import recipe_for
from dist_train.diffusion import WeightDistance
from dist_train.distributed import DistContext, all_gather_objects, distributed, restart_count
from dist_train.errors import ConfigError, DistTrainError, one_line
from dist_train.models import build_model
from dist_train.monitor import Monitor, NullMonitor
from dist_train.nn.ghost_bn import convert_to_ghost_bn
from dist_train.optim import build_optimizer, build_scheduler
from dist_train.regime import cross_epoch_batches, format_plan, plan_from_config
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


def build_trainer(
    cfg: Config,
    ctx: DistContext,
    extra_callbacks: Sequence[Callback] = (),
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """Everything a Trainer needs, on every rank; only rank 0 (of ``ctx``) touches the run directory.

    ``initial_weights`` (a model state_dict) start a run that has no checkpoint to resume.
    No collective runs here, so a rank that fails cannot leave its peers waiting in one.
    """
    micro_batch = micro_batch_size(cfg.data.batch_size, ctx.world_size, cfg.train.grad_accum_steps)
    run_dir = Path(cfg.out_dir) / cfg.name
    resume_from = checkpoint.find_resume(cfg.resume, run_dir / "checkpoints")
    state = checkpoint.load(resume_from) if resume_from else None
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

    monitor: Monitor = NullMonitor()
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        monitor = Monitor(run_dir, resume_step=int(state["step"]) if state else None)
    trainer = Trainer(
        cfg, ctx, model, optimizer, scheduler, train_loader, val_loader, monitor, run_dir, plan.epochs, callbacks
    )
    if state is not None:
        trainer.load_state_dict(state, resume_from)
        monitor.print(f"resumed from {resume_from} at epoch {trainer.epoch}, step {trainer.step}")
    elif initial_weights is not None:
        model.load_state_dict(initial_weights)
    parameters = sum(p.numel() for p in model.parameters())
    monitor.event(
        trainer.step,
        "start",
        resumed_from=str(resume_from) if resume_from else None,
        restarts=restart_count(),
        world_size=ctx.world_size,
        backend=ctx.backend,
        device=str(ctx.device),
        parameters=parameters,
        steps_per_epoch=train_loader.steps_per_epoch,
    )
    if not state and ctx.is_primary:
        grid, rows = view_grid(train_loader, cfg.augment.copies, micro_batch, cfg.augment.layout)
        monitor.image("augment/views", grid)
        monitor.text("augment/views", rows)
        monitor.text("config", f"```\n{to_yaml(cfg)}\n```")
        monitor.text("plan", f"```\n{format_plan(plan)}\n```")
    monitor.print(
        f"run {run_dir} | {ctx.world_size} process(es), {ctx.backend} on {ctx.device.type} | "
        f"{cfg.model.name} ({parameters / 1e6:.2f}M params) | {len(data.train)} train / {len(data.val)} val | "
        f"batch {cfg.data.batch_size} ({micro_batch}/process × {cfg.train.grad_accum_steps} accum) | "
        f"{plan.epochs} epochs × {train_loader.steps_per_epoch} steps | lr {plan.lr:.4g}"
        + (f" | ghost BN {cfg.bn.ghost_batch_size}" if cfg.bn.ghost_batch_size else "")
    )
    return trainer


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


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def agree(setup: Callable[[], Trainer], group: ProcessGroup | None = None) -> Trainer:
    """Run ``setup`` on every rank; if any rank hit a DistTrainError, every rank raises one.

    Start-up errors (bad data, checkpoint, batch size) then reach every rank's
    console instead of one rank failing while its peers are torn down.
    """
    trainer, error = None, None
    try:
        trainer = setup()
    except DistTrainError as e:
        error = one_line(e)
    errors = all_gather_objects(error, group)
    if error is not None:
        raise DistTrainError(error)
    failed = (
        next((rank, message) for rank, message in enumerate(errors) if message is not None) if any(errors) else None
    )
    if failed is not None:
        trainer.monitor.close()
        raise DistTrainError(f"stopped because rank {failed[0]} failed: {failed[1]}")
    return trainer


def train(cfg: Config) -> dict[str, Any]:
    """Run (or continue) one training run inside the process group the environment describes."""
    with distributed(cfg.device, cfg.dist.backend, cfg.dist.timeout_s) as ctx:
        if cfg.swap.enabled:
            from dist_train.swap import train_swap

            summary = train_swap(cfg, ctx)
            if ctx.is_primary:
                write_json(Path(cfg.out_dir) / cfg.name / "summary.json", {**summary, "config": to_dict(cfg)})
            return summary
        trainer = agree(lambda: build_trainer(cfg, ctx))
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
