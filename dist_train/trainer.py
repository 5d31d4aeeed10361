"""The training loop: small methods (train_step, train_epoch, evaluate, fit) that know no paper.

The Trainer's state (model, optimizer, scheduler, counters, RNG states) is
exactly what a checkpoint holds, so resuming is ``load_state_dict`` and
nothing else.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from dist_train import checkpoint
from dist_train.config import Config, to_dict
from dist_train.data.loader import TrainLoader, epoch_seed
from dist_train.distributed import DistContext, agree, all_gather_objects, all_reduce_sum
from dist_train.errors import CheckpointError
from dist_train.grad_reduce import fix_bucket_layout
from dist_train.health import RankHealth
from dist_train.monitor import Monitor
from dist_train.nn.ghost_bn import averaged_bn_buffers, bn_running_buffers, has_ghost_bn
from dist_train.rundir import check_model_fits
from dist_train.stop import GUARD, StopVote, Terminated


class Callback(Protocol):
    """A hook into the loop (techniques plug in here; the loop itself knows none)."""

    name: str

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, values: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    seconds: float
    images_per_second: float


@dataclass
class EpochProgress:
    """How far a mid-epoch checkpoint got into its epoch."""

    steps: int
    """Optimizer steps done in the epoch."""
    totals: list[float]
    """Summed loss, correct and count of those steps, on this rank."""
    rng: dict[str, Any] | None = None
    """This rank's RNG states at that point."""


def ddp_buffer_sync(sync: bool) -> dict[str, bool]:
    """DDP's switch for copying rank 0's buffers each forward (renamed in newer torch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


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


HOST_READS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__", "__format__"}
)
"""Tensor methods that bring a value to the host: on a GPU each waits for the device (a synchronisation)."""
_TORCH_DIR = str(Path(torch.__file__).parent)


class HostReadCounter(TorchFunctionMode):
    """Records the reads of tensor values by the host (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``,
    ``.cpu()``, ...) made from Python while active: each is a host-device synchronisation on a GPU.

    A debugging aid that works on the CPU too (where such reads cost nothing): install it as
    :attr:`Trainer.step_guard` to check that training steps make none. Reads inside C++ operators (a GPU
    ``nonzero``) are not seen; ``torch.cuda.set_sync_debug_mode("error")`` catches those on a GPU.
    Each read is recorded as ``(label(), "name at file:line")``: ``label`` gives the context (a step), the
    place is the first caller outside torch (so a read inside a torch function is charged to its caller).
    """

    def __init__(self, label: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.label = label
        self.reads: list[tuple[Any, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = sys._getframe(1)
            while caller.f_back is not None and caller.f_code.co_filename.startswith(_TORCH_DIR):
                caller = caller.f_back  # the first frame outside torch: whose code asked for the read
            self.reads.append((self.label(), f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}"))
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def evaluate(
    module: nn.Module,
    loader: DataLoader,
    to_device: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], Any],
    group: ProcessGroup | None = None,
) -> tuple[float, float]:
    """Loss and accuracy of ``module`` over ``loader``'s shards, summed over the ranks of ``group``."""
    module.eval()
    device = next(module.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # summed on the device, read once at the end
    for images, labels in loader:
        images, labels = to_device(images, labels)
        with autocast():
            logits = module(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = (logits.argmax(1) == labels).sum()
        totals[0] += loss.double()
        totals[1] += correct.double()
        totals[2] += labels.numel()
    totals = all_reduce_sum(totals, group)
    loss_sum, correct_sum, count = totals.tolist()
    return loss_sum / count, correct_sum / count


class Trainer:
    """Trains ``model`` data-parallel over the ranks of ``ctx`` as ``cfg`` says."""

    def __init__(
        self,
        cfg: Config,
        ctx: DistContext,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: TrainLoader,
        val_loader: DataLoader,
        monitor: Monitor,
        run_dir: Path,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.module = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.monitor = monitor
        self.run_dir = run_dir
        self.total_epochs = epochs if epochs is not None else cfg.train.epochs
        self.callbacks = list(callbacks)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.best_accuracy = 0.0
        self.stop_requested = False  # set by a callback to end training after the current epoch
        self.diverged = False  # an epoch's training loss was not finite
        self._partial: EpochProgress | None = None  # where a mid-epoch checkpoint left the current epoch
        self.last_save: tuple[int | None, float] = (None, 0.0)  # the step of this process's last checkpoint, seconds
        self.train_loss = float("nan")  # of the last epoch trained
        self._wrapped: nn.Module | None = None
        self.health = RankHealth(ctx)
        """Every rank's pace over each log window, gathered at the log points (see :mod:`dist_train.health`)."""
        self.step_guard: Callable[[], Any] = nullcontext
        """Entered around each training step (``train_step`` and the summing of its metrics): a check that
        a step does not synchronise, e.g. ``torch.cuda.set_sync_debug_mode`` or :class:`HostReadCounter`."""

    @property
    def model(self) -> nn.Module:
        """The module as trained: DDP-wrapped and/or compiled (wrapped on first use: a collective)."""
        if self._wrapped is None:
            self._wrapped = self._wrap(self.module)
        return self._wrapped

    # -- setup -------------------------------------------------------------------------------------
    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP across ranks (when there are several), then torch.compile if asked."""
        wrapped: nn.Module = model
        if self.ctx.is_distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            # Ghost BN keeps per-rank statistics: DDP must not overwrite them with rank 0's.
            sync = self.cfg.dist.sync_buffers and not has_ghost_bn(model)
            wrapped = DistributedDataParallel(
                model, device_ids=device_ids, process_group=self.ctx.group, **ddp_buffer_sync(sync)
            )
            if self.cfg.dist.exact_reduction and not fix_bucket_layout(wrapped):
                self.monitor.print(
                    f"warning: torch {torch.__version__} cannot fix DDP's bucket layout (dist.exact_reduction): "
                    "with 3 or more ranks a resumed run may differ from an uninterrupted one in the last bits"
                )
        if self.cfg.train.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / checkpoint.LAST

    def autocast(self) -> Any:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.cfg.train.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.ctx.device, non_blocking=True)

    # -- the loop ----------------------------------------------------------------------------------
    def train_step(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """One optimizer step over ``grad_accum_steps`` micro-batches.

        Returns detached sums (loss × count, correct, count) and the gradient norm
        (computed only when clipping or logging needs it, else NaN), all on the device and
        none read: a step never waits for the device (nothing here synchronises with it).
        """
        accum = self.cfg.train.grad_accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.ctx.device)
        correct = torch.zeros((), device=self.ctx.device, dtype=torch.long)
        count = 0
        for index, (images, labels) in enumerate(micro_batches):
            images, labels = self.to_device(images, labels)
            last = index == accum - 1
            skip_sync = self.ctx.is_distributed and not last
            with self.model.no_sync() if skip_sync else nullcontext():
                with self.autocast():
                    logits = self.model(images)
                    loss = F.cross_entropy(logits, labels)
                (loss / accum).backward()
            loss_sum += loss.detach() * labels.numel()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            count += labels.numel()
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        for callback in self.callbacks:
            callback.on_step_end(self)
        # torch.full, not torch.tensor(count, device=...): a host-to-device copy of a Python number waits.
        return loss_sum, correct, torch.full((), count, device=self.ctx.device), grad_norm

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to ``train.grad_clip_norm`` (if set); the global gradient norm, on the device, or NaN when
        neither clipping nor this step's log needs it. Neither reads the norm (no ``error_if_nonfinite``)."""
        clip = self.cfg.train.grad_clip_norm
        if clip > 0:
            return nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        if (self.step + 1) % self.cfg.train.log_every == 0:
            return nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
        return torch.full((), float("nan"), device=self.ctx.device)

    def _micro_batch_groups(self, epoch: int, done: int = 0) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The epoch's micro-batches, a step's worth at a time, after the first ``done`` steps (not loaded)."""
        accum = self.cfg.train.grad_accum_steps
        batches = self.train_loader.epoch(epoch, start=done * accum)
        while group := list(islice(batches, accum)):
            yield group

    def train_epoch(self, epoch: int) -> EpochResult:
        self.model.train()
        seed_everything(epoch_seed(self.cfg.seed, epoch, self.ctx.rank))
        partial, self._partial = self._partial, None
        totals = torch.zeros(3, device=self.ctx.device, dtype=torch.float64)
        if partial:
            totals += torch.tensor(partial.totals, dtype=torch.float64).to(self.ctx.device)
        steps_per_epoch = self.train_loader.steps_in(epoch)  # fewer in a last, partial epoch
        self.monitor.start_epoch(epoch + 1, steps_per_epoch)
        done_before = partial.steps if partial else 0
        # A mid-epoch resume starts the loader at the checkpoint's step: the batches before it are skipped
        # without being read, and the random state is the checkpoint's (see dist_train/data/loader.py).
        groups = self.health.batches(self._micro_batch_groups(epoch, done_before))
        if partial:
            if partial.rng is not None:
                set_rng_state(partial.rng)
            self.monitor.advance(partial.steps)
        every = self.cfg.checkpoint.every_steps
        start = time.perf_counter()
        self.health.start()
        # A SIGTERM during the steps is only recorded; the ranks agree after each step whether one came.
        vote, index = StopVote(self.ctx.cpu_group, self.ctx.is_distributed), done_before
        # Metrics stay on the device: the host reads them only every train.log_every steps, at a mid-epoch
        # checkpoint and at the epoch's end, so steps queue on the GPU without waiting for each other.
        with GUARD.deferred():
            for index, group in enumerate(groups, start=done_before + 1):
                with self.step_guard():
                    loss_sum, correct, count, grad_norm = self.train_step(group)
                    totals += torch.stack([loss_sum.double(), correct.double(), count.double()])
                if every and self.step % every == 0 and index < steps_per_epoch:
                    self.save_checkpoint(EpochProgress(index, totals.tolist()))
                if self.step % self.cfg.train.log_every == 0:
                    loss, norm = torch.stack([loss_sum / count, grad_norm.to(loss_sum.device)]).tolist()  # one read
                    values = {"train/step_loss": loss, "train/lr": self.scheduler.get_last_lr()[0]}
                    if not math.isnan(norm):
                        values["train/grad_norm"] = norm
                    ranks = self.health.gather()  # after the read: the window's time includes its device work
                    self.monitor.log(self.step, values | ranks.scalars(), epoch=epoch + 1)
                    if news := self.health.news(ranks):  # a rank became a straggler (or none is any more)
                        self.monitor.print("\n".join(news))
                        self.monitor.text("ranks/stragglers", "\n\n".join(news), self.step)
                    self.monitor.advance(self.cfg.train.log_every, loss=loss)
                if vote.poll(GUARD.received):
                    break
            if vote.finish(GUARD.received):
                raise Terminated(self._stop_for_sigterm(EpochProgress(index, totals.tolist())))
        all_reduce_sum(totals, self.ctx.group)
        loss_sum, correct, count = totals.tolist()  # waits for the device: the epoch's time includes its work
        seconds = time.perf_counter() - start
        self.monitor.end_epoch()
        trained = count * (steps_per_epoch - done_before) / steps_per_epoch  # images this call trained on
        return EpochResult(loss_sum / count, correct / count, seconds, trained / seconds)

    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy on the whole validation set (each image counted once over all ranks), with the
        BN statistics averaged over the ranks for the evaluation only."""
        with averaged_bn_buffers(self.module, self.ctx.group):
            return evaluate(self.module, self.val_loader, self.to_device, self.autocast, self.ctx.group)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluating and checkpointing as configured; return the summary.

        A callback may end training early by setting ``stop_requested`` in ``on_epoch_end``; the
        flag is checkpointed, so a resumed run stops where the interrupted one had decided to.
        """
        started = time.perf_counter()
        first_epoch = self.epoch
        val_loss, val_accuracy = float("nan"), float("nan")
        for epoch in range(first_epoch, self.total_epochs):
            if self.stop_requested:
                break
            result = self.train_epoch(epoch)
            self.epoch = epoch + 1
            values = {
                "train/loss": result.loss,
                "train/acc": result.accuracy,
                "train/epoch_time_s": result.seconds,
                "train/images_per_s": result.images_per_second,
            }
            self.train_loss = result.loss
            if not math.isfinite(result.loss):
                self.diverged = True
                self.stop_requested |= self.cfg.train.stop_on_divergence
            for callback in self.callbacks:
                callback.on_epoch_end(self, values)
            last = self.epoch == self.total_epochs or self.stop_requested
            if last or self.epoch % self.cfg.train.eval_every == 0:
                val_loss, val_accuracy = self.evaluate()
                self.best_accuracy = max(self.best_accuracy, val_accuracy)
                values |= {"val/loss": val_loss, "val/acc": val_accuracy}
            self.monitor.log(self.step, values, epoch=self.epoch)
            self.monitor.print(self._epoch_line(values))
            if self.diverged and self.stop_requested:
                self.monitor.print(
                    f"training loss is {result.loss}: the run diverged; stopping (train.stop_on_divergence)"
                )
            every = self.cfg.checkpoint.every_epochs
            if last or (every and self.epoch % every == 0):
                self.save_checkpoint()
        if self.epoch == first_epoch:  # nothing left to train: report the checkpoint's model
            val_loss, val_accuracy = self.evaluate()
        summary = self._summary(val_loss, val_accuracy, time.perf_counter() - started)
        for callback in self.callbacks:
            summary |= callback.on_fit_end(self)
        return summary

    def _epoch_line(self, values: dict[str, float]) -> str:
        line = (
            f"epoch {self.epoch}/{self.total_epochs} step {self.step} | "
            f"train loss {values['train/loss']:.4f} acc {values['train/acc']:.2%} | "
        )
        if "val/acc" in values:
            line += f"val loss {values['val/loss']:.4f} acc {values['val/acc']:.2%} | "
        return line + f"{values['train/images_per_s']:.0f} img/s | {values['train/epoch_time_s']:.1f}s"

    def _summary(self, val_loss: float, val_accuracy: float, seconds: float) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "epochs": self.epoch,
            "steps": self.step,
            "train_loss": self.train_loss,
            "diverged": self.diverged,
            "val_loss": val_loss,
            "val_acc": val_accuracy,
            "best_val_acc": self.best_accuracy,
            "world_size": self.ctx.world_size,
            "batch_size": self.cfg.data.batch_size,
            "lr": self.optimizer.param_groups[0]["initial_lr"],  # as planned by the regime
            "ghost_batch_size": self.cfg.bn.ghost_batch_size,
            "train_seconds": seconds,
        }

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self, progress: EpochProgress | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly; RNG states of every rank, in rank order (a collective).

        ``progress``: the checkpoint is taken inside an epoch, this far into it. ``model`` holds the BN
        statistics averaged over the ranks (what evaluation and inference use); ``bn_buffers`` each rank's
        own, which a resume with the same world size restores. Neither changes the live model.
        """
        own = {key: buf.detach().cpu().clone() for key, buf in bn_running_buffers(self.module).items()}
        with averaged_bn_buffers(self.module, self.ctx.group):
            averaged = {key: buf.detach().clone() for key, buf in bn_running_buffers(self.module).items()}
        return {
            "epoch_progress": None
            if progress is None
            else {"steps": progress.steps, "totals": all_gather_objects(progress.totals, self.ctx.group)},
            "model": {**self.module.state_dict(), **averaged},
            "bn_buffers": all_gather_objects(own, self.ctx.group),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_accuracy": self.best_accuracy,
            "stop_requested": self.stop_requested,
            "diverged": self.diverged,
            "train_loss": self.train_loss,
            "world_size": self.ctx.world_size,
            "rng": all_gather_objects(rng_state(), self.ctx.group),
            "config": to_dict(self.cfg),
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        check_model_fits(self.module.state_dict(), state["model"], source)
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {source} does not fit this run: {first}") from None
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_accuracy = float(state.get("best_accuracy", 0.0))
        self.stop_requested = bool(state.get("stop_requested", False))
        self.diverged = bool(state.get("diverged", False))
        self.train_loss = float(state.get("train_loss", float("nan")))
        for callback in self.callbacks:
            if callback.name in state.get("callbacks", {}):
                callback.load_state_dict(state["callbacks"][callback.name])
        own_buffers = state.get("bn_buffers") or []
        if len(own_buffers) == self.ctx.world_size:
            with torch.no_grad():
                for key, buf in bn_running_buffers(self.module).items():
                    if key in own_buffers[self.ctx.rank]:
                        buf.copy_(own_buffers[self.ctx.rank][key])
        rng = state.get("rng", [])
        if len(rng) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank])
        progress = state.get("epoch_progress")
        if progress is not None:
            if len(progress["totals"]) != self.ctx.world_size:
                raise CheckpointError(
                    f"checkpoint {source} was taken inside an epoch by {len(progress['totals'])} processes; "
                    f"it resumes only with the same world size (this run has {self.ctx.world_size})"
                )
            rank_rng = rng[self.ctx.rank] if len(rng) == self.ctx.world_size else None
            self._partial = EpochProgress(int(progress["steps"]), progress["totals"][self.ctx.rank], rank_rng)

    def save_checkpoint(self, progress: EpochProgress | None = None) -> None:
        """Collective (gathers RNG states); only rank 0 writes, and a failed write (a full disk) stops every rank."""
        started = time.monotonic()
        state = self.state_dict(progress)
        agree(
            lambda: checkpoint.atomic_save(state, self.checkpoint_path) if self.ctx.is_primary else None, self.ctx.group
        )
        self.last_save = (self.step, time.monotonic() - started)

    def _stop_for_sigterm(self, progress: EpochProgress) -> str:
        """Checkpoint at ``progress`` when the last save fits in what is left of ``checkpoint.sigterm_budget_s``
        (every rank agrees); the line that says where the run stopped and where it resumes."""
        budget = self.cfg.checkpoint.sigterm_budget_s
        left = budget - GUARD.seconds_since()
        last_step, last_seconds = self.last_save
        skip = torch.tensor([int(last_seconds > left)], dtype=torch.int32)
        if self.ctx.is_distributed:
            dist.all_reduce(skip, group=self.ctx.cpu_group)
        where = f"stopped by SIGTERM after step {self.step} (epoch {self.epoch + 1}, step {progress.steps} of it)"
        if skip.item():
            self.monitor.event(self.step, "stopped", signal="SIGTERM", checkpoint=False)
            resumes = f"resumes from step {last_step}" if last_step is not None else "starts again from step 0"
            return (
                f"{where}: no checkpoint (the last took {last_seconds:.1f} s, more than the {max(left, 0):.1f} s "
                f"left of checkpoint.sigterm_budget_s={budget:g}); the run {resumes}"
            )
        self.save_checkpoint(progress)
        self.monitor.event(self.step, "stopped", signal="SIGTERM", checkpoint=True)
        return f"{where}: checkpoint {self.checkpoint_path} written in {self.last_save[1]:.1f} s; the run resumes there"
