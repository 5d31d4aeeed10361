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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from dist_train import checkpoint
from dist_train.config import Config, to_dict, to_yaml
from dist_train.dashboard import labelled_rows
from dist_train.data import DatasetSplits, build_datasets
from dist_train.data.loader import LoaderOptions, TrainLoader, build_eval_loader, build_train_loader, micro_batch_size
from dist_train.data.tensor_loader import IN_MEMORY
from dist_train.data.transforms import Recipe, recipe_for
from dist_train.diffusion import WeightDistance
from dist_train.distributed import DistContext, agree
from dist_train.errors import ConfigError
from dist_train.models import build_model
from dist_train.monitor import Monitor, NullMonitor, check_records
from dist_train.nn.ghost_bn import convert_to_ghost_bn
from dist_train.optim import build_optimizer, build_scheduler
from dist_train.regime import Plan, cross_epoch_batches, format_plan, plan_from_config
from dist_train.rundir import History, check_resume, recorded_config, remove_partial_writes, write_config
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
    run_dir = Path(cfg.out_dir) / cfg.name
    path = checkpoint.find_resume(cfg.resume, run_dir / "checkpoints")
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


def build_network(cfg: Config, ctx: DistContext, data: DatasetSplits, micro_batch: int) -> nn.Module:
    """The model for ``data``, with Ghost BN as configured, on the run's device and memory format."""
    model = build_model(
        cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width, cfg.model.kwargs
    )
    apply_ghost_bn(model, cfg.bn.ghost_batch_size, micro_batch * cfg.augment.copies)
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def loader_options(cfg: Config, ctx: DistContext, micro_batch: int) -> LoaderOptions:
    """How this rank's training loader cuts, shards and seeds the data (either backend)."""
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
        device_id=ctx.device.index if ctx.device.type == "cuda" else None,
    )


def resolve_data_backend(cfg: Config, device: torch.device) -> None:
    """Make ``data.backend: auto`` concrete for this run: the tensor loader for an in-memory data set on a GPU
    (the whole split in GPU memory, no loader workers), the torch DataLoader otherwise (on a CPU its worker
    processes load while the training process computes)."""
    if cfg.data.backend != "auto":
        return
    in_memory = cfg.data.dataset in IN_MEMORY and recipe_for(cfg.data).crop in ("pad", "none")
    cfg.data.backend = "tensor" if device.type == "cuda" and in_memory else "torch"


def data_recipe(cfg: Config, data: DatasetSplits) -> Recipe:
    """How ``data`` is augmented and normalised: the factory's recipe for a plug-in data set, else the config's."""
    return data.recipe or recipe_for(cfg.data)


def build_training_loader(cfg: Config, ctx: DistContext, data: DatasetSplits, micro_batch: int) -> TrainLoader:
    """The training loader of ``data.backend``: torch DataLoader, DALI pipelines or device tensors, one contract.

    ``data`` must come from ``build_datasets(cfg.data, copies=...)`` with the torch backend's views
    (:func:`training_copies`): DALI and the tensor backend make their views themselves.
    """
    options = loader_options(cfg, ctx, micro_batch)
    if cfg.data.backend == "dali":
        from dist_train.data.dali import DaliTrainLoader

        return DaliTrainLoader(data.train, data_recipe(cfg, data), data.image_size, options)  # type: ignore[return-value]
    if cfg.data.backend == "tensor":
        from dist_train.data.tensor_loader import TensorTrainLoader

        return TensorTrainLoader(data.train, data_recipe(cfg, data), options, ctx.device)  # type: ignore[arg-type,return-value]
    return build_train_loader(data.train, options)


def training_copies(cfg: Config) -> int:
    """Views per sample the dataset itself makes: the torch backend's batch augmentation (DALI and tensor make
    their own)."""
    return 1 if cfg.data.backend in ("dali", "tensor") else cfg.augment.copies


def build_val_loader(cfg: Config, ctx: DistContext, data: DatasetSplits) -> DataLoader:
    """The validation loader: a DataLoader, or with ``data.backend: dali`` a DALI pipeline giving the same
    images, shards and batches."""
    eval_batch = cfg.data.eval_batch_size or cfg.data.batch_size
    if cfg.data.backend == "dali":
        from dist_train.data.dali import DaliEvalLoader

        device_id = ctx.device.index if ctx.device.type == "cuda" else None
        return DaliEvalLoader(  # type: ignore[return-value]
            data.val,
            data_recipe(cfg, data),
            data.image_size,
            eval_batch,
            ctx.rank,
            ctx.world_size,
            cfg.data.num_workers,
            device_id,
        )
    return build_eval_loader(
        data.val, eval_batch, ctx.rank, ctx.world_size, cfg.data.num_workers, ctx.device.type == "cuda"
    )


def build_callbacks(cfg: Config, model: nn.Module, plan: Plan, extra: Sequence[Callback]) -> list[Callback]:
    """The techniques that hook into the loop: the caller's, then the diffusion monitor if configured."""
    callbacks = list(extra)
    if cfg.diffusion.every_steps:
        fit_until = cfg.diffusion.fit_until_step or (plan.milestone_steps or (plan.total_steps,))[0]
        callbacks.append(WeightDistance(model, cfg.diffusion.every_steps, fit_until))
    return callbacks


def describe_run(
    cfg: Config, ctx: DistContext, model: nn.Module, data: DatasetSplits, loader: TrainLoader, plan: Plan
) -> str:
    """The run's one-line summary: where, how many processes on which hosts, model, data, batch, epochs, lr."""
    micro_batch = micro_batch_size(cfg.data.batch_size, ctx.world_size, cfg.train.grad_accum_steps)
    parameters = sum(p.numel() for p in model.parameters())
    hosts = sorted(set(ctx.hosts))
    on_hosts = f"{len(hosts)} hosts ({', '.join(hosts[:4])}{', ...' * (len(hosts) > 4)}) | " if len(hosts) > 1 else ""
    return (
        f"run {Path(cfg.out_dir) / cfg.name} | {ctx.world_size} process(es), {ctx.backend} on {ctx.device.type} | "
        f"{on_hosts}{cfg.model.name} ({parameters / 1e6:.2f}M params) | "
        f"{len(data.train)} train / {len(data.val)} val | "
        f"batch {cfg.data.batch_size} ({micro_batch}/process × {cfg.train.grad_accum_steps} accum) | "
        f"{plan.epochs} epochs × {loader.steps_per_epoch} steps | lr {plan.lr:.4g}"
        + (f" | ghost BN {cfg.bn.ghost_batch_size}" if cfg.bn.ghost_batch_size else "")
    )


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
    model = build_network(cfg, ctx, data, micro_batch)
    train_loader = build_training_loader(cfg, ctx, data, micro_batch)
    plan = plan_from_config(cfg, len(data.train), train_loader.steps_per_epoch)
    train_loader.order.total_steps = plan.total_steps  # the last epoch is partial when the plan says so
    optimizer = build_optimizer(model, cfg.optim, lr=plan.lr)
    scheduler = build_scheduler(optimizer, plan.schedule(cfg.schedule))
    callbacks = build_callbacks(cfg, model, plan, extra_callbacks)
    run_dir = Path(cfg.out_dir) / cfg.name
    val_loader = build_val_loader(cfg, ctx, data)
    trainer = Trainer(
        cfg, ctx, model, optimizer, scheduler, train_loader, val_loader, NullMonitor(), run_dir, plan.epochs, callbacks
    )
    lines, finished = list(resume.lines), False
    if resume.state is not None:
        trainer.load_state_dict(resume.state, resume.path)  # type: ignore[arg-type]
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
        grid = view_grid(trainer.train_loader, cfg.augment.copies, micro_batch, cfg.augment.layout)
        monitor.image("augment/views", grid)
        monitor.text("config", f"```\n{to_yaml(cfg)}\n```")
        monitor.text("plan", f"```\n{prepared.plan_text}\n```")
    monitor.text("hosts", hosts_table(trainer.ctx), trainer.step)
    monitor.print(prepared.lines[-1])


def hosts_table(ctx: DistContext) -> str:
    """The ranks of each host, as a Markdown table (TensorBoard's TEXT tab)."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(ctx.hosts):
        ranks.setdefault(host, []).append(rank)
    rows = [f"| {host} | {', '.join(map(str, found))} |" for host, found in ranks.items()]
    head = [f"{ctx.world_size} process(es) on {len(ranks)} host(s)", "", "| host | ranks |", "|---|---|"]
    return "\n".join([*head, *rows])


def view_grid(loader: TrainLoader, copies: int, micro_batch: int, layout: str, samples: int = 8) -> torch.Tensor:
    """A picture of the training input: a row per sample, its ``copies`` augmented views side by side and
    its class name on the left."""
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
    return labelled_rows(grid, [names[r] if r < len(names) else str(r) for r in rows])


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
