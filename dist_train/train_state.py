"""What a checkpoint holds of a Trainer, and how a Trainer is put back to it: resuming is loading this state.

The state is the model (its BN statistics averaged over the ranks: what evaluation and inference use), each
rank's own BN statistics, the optimizer and scheduler, the counters, every rank's RNG states, the config,
the callbacks' states and, for a checkpoint taken inside an epoch, how far into it the ranks got
(:class:`EpochProgress`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dist_train import checkpoint
from dist_train.config import to_dict
from dist_train.distributed import agree, all_gather_objects
from dist_train.errors import CheckpointError
from dist_train.nn.bn_buffers import averaged_bn_buffers, bn_running_buffers
from dist_train.rundir import check_model_fits

if TYPE_CHECKING:
    from dist_train.trainer import Trainer


@dataclass
class EpochProgress:
    """How far a mid-epoch checkpoint got into its epoch."""

    steps: int
    """Optimizer steps done in the epoch."""
    totals: list[float]
    """Summed loss, correct and count of those steps, on this rank."""
    rng: dict[str, Any] | None = None
    """This rank's RNG states at that point."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainer_state(trainer: Trainer, progress: EpochProgress | None = None) -> dict[str, Any]:
    """Everything needed to continue exactly; RNG states of every rank, in rank order (a collective).

    ``progress``: the checkpoint is taken inside an epoch, this far into it. ``model`` holds the BN
    statistics averaged over the ranks (what evaluation and inference use); ``bn_buffers`` each rank's
    own, which a resume with the same world size restores. Neither changes the live model.
    """
    module, group = trainer.module, trainer.ctx.group
    own = {key: buf.detach().cpu().clone() for key, buf in bn_running_buffers(module).items()}
    with averaged_bn_buffers(module, group):
        averaged = {key: buf.detach().clone() for key, buf in bn_running_buffers(module).items()}
    return {
        "epoch_progress": None
        if progress is None
        else {"steps": progress.steps, "totals": all_gather_objects(progress.totals, group)},
        "model": {**module.state_dict(), **averaged},
        "bn_buffers": all_gather_objects(own, group),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.step,
        "best_accuracy": trainer.best_accuracy,
        "stop_requested": trainer.stop_requested,
        "diverged": trainer.diverged,
        "train_loss": trainer.train_loss,
        "world_size": trainer.ctx.world_size,
        "rng": all_gather_objects(rng_state(), group),
        "config": to_dict(trainer.cfg),
        "callbacks": {c.name: c.state_dict() for c in trainer.callbacks},
    }


def load_trainer_state(trainer: Trainer, state: dict[str, Any], source: Path) -> None:
    """Put ``trainer`` back to ``state`` (read from ``source``), a mid-epoch checkpoint at its step in the epoch."""
    ctx = trainer.ctx
    check_model_fits(trainer.module.state_dict(), state["model"], source)
    try:
        trainer.module.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {source} does not fit this run: {first}") from None
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.best_accuracy = float(state.get("best_accuracy", 0.0))
    trainer.stop_requested = bool(state.get("stop_requested", False))
    trainer.diverged = bool(state.get("diverged", False))
    trainer.train_loss = float(state.get("train_loss", float("nan")))
    for callback in trainer.callbacks:
        if callback.name in state.get("callbacks", {}):
            callback.load_state_dict(state["callbacks"][callback.name])
    own_buffers = state.get("bn_buffers") or []
    if len(own_buffers) == ctx.world_size:
        with torch.no_grad():
            for key, buf in bn_running_buffers(trainer.module).items():
                if key in own_buffers[ctx.rank]:
                    buf.copy_(own_buffers[ctx.rank][key])
    rng = state.get("rng", [])
    if len(rng) == ctx.world_size:
        set_rng_state(rng[ctx.rank])
    progress = state.get("epoch_progress")
    if progress is None:
        return
    if len(progress["totals"]) != ctx.world_size:
        raise CheckpointError(
            f"checkpoint {source} was taken inside an epoch by {len(progress['totals'])} processes; "
            f"it resumes only with the same world size (this run has {ctx.world_size})"
        )
    rank_rng = rng[ctx.rank] if len(rng) == ctx.world_size else None
    trainer._partial = EpochProgress(int(progress["steps"]), progress["totals"][ctx.rank], rank_rng)


def save_checkpoint(trainer: Trainer, progress: EpochProgress | None = None) -> None:
    """Collective (gathers RNG states); only rank 0 writes, and a failed write (a full disk) stops every rank."""
    started = time.monotonic()
    state = trainer_state(trainer, progress)
    ctx = trainer.ctx
    agree(lambda: checkpoint.atomic_save(state, trainer.checkpoint_path) if ctx.is_primary else None, ctx.group)
    trainer.last_save = (trainer.step, time.monotonic() - started)
