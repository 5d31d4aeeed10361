"""The training loop: small methods (train_step, train_epoch, evaluate, fit) that fire the callbacks' events.

The loop knows no technique: each acts through a :class:`~dist_train.callbacks.Callback`. It is handed the
model, how to wrap it for training (:func:`dist_train.parallel.parallelize`), the loss, the optimizer, the
scheduler and the loaders. Its state is exactly what a checkpoint holds (:mod:`dist_train.train_state`), so
resuming is ``load_state_dict`` and nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_train import resume, train_state
from dist_train.callbacks import Callback
from dist_train.config import Config
from dist_train.data.contract import EvalLoader, TrainLoader
from dist_train.data.loader import epoch_seed, step_batches
from dist_train.distributed import DistContext, all_reduce_sum
from dist_train.evaluate import evaluate
from dist_train.grad_clip import clip_gradients
from dist_train.monitor import Monitor, epoch_line, run_summary
from dist_train.nn.bn_buffers import averaged_bn_buffers
from dist_train.parallel import parallelize
from dist_train.stop import GUARD, StopVote, Terminated, checkpoint_on_sigterm, stop_at_epoch_end
from dist_train.train_state import EpochProgress, seed_everything, set_rng_state

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # loss(logits, labels): a micro-batch's mean loss
LAYOUTS = (torch.contiguous_format, torch.channels_last)  # the input layout by train.channels_last


@dataclass
class EpochResult:
    loss: float  # the mean over the epoch's training images, over all ranks, as accuracy
    accuracy: float
    seconds: float
    images_per_second: float

    def metrics(self) -> dict[str, float]:
        names = ("train/loss", "train/acc", "train/epoch_time_s", "train/images_per_s")
        return dict(zip(names, (self.loss, self.accuracy, self.seconds, self.images_per_second), strict=True))


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
        val_loader: EvalLoader,
        monitor: Monitor,
        run_dir: Path,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        loss: Loss = F.cross_entropy,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.cfg, self.ctx, self.module, self.loss = cfg, ctx, model, loss
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.monitor, self.run_dir = monitor, run_dir
        self.total_epochs = epochs if epochs is not None else cfg.train.epochs
        self.callbacks = list(callbacks)
        self.wrap = wrap or partial(parallelize, cfg=cfg, ctx=ctx, warn=lambda line: self.monitor.print(line))
        """The module as trained (DDP, torch.compile): applied at the first training step (a collective)."""
        self.epoch, self.step = 0, 0  # completed epochs, optimizer steps taken
        self.best_accuracy = 0.0
        self.stop_requested = False  # set by a callback to end training after the current epoch
        self.diverged = False  # an epoch's training loss was not finite
        self._partial: EpochProgress | None = None  # where a mid-epoch checkpoint left the current epoch
        self.last_save: tuple[int | None, float] = (None, 0.0)  # the step of this process's last checkpoint, seconds
        self.train_loss, self._wrapped = float("nan"), None  # of the last epoch trained; the module as trained
        self.step_guard: Callable[[], Any] = nullcontext
        """Entered around each step and the summing of its metrics (e.g. :class:`~dist_train.debug.HostReadCounter`)."""

    @property
    def model(self) -> nn.Module:
        """The module as trained, wrapped by ``wrap`` on first use."""
        if self._wrapped is None:
            self._wrapped = self.wrap(self.module)
        return self._wrapped

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / resume.LAST

    def autocast(self) -> Any:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.ctx.device, non_blocking=True)
        if images.dim() == 4:  # the layout asked for, whatever the loader's (DALI may hand NHWC-strided batches)
            images = images.contiguous(memory_format=LAYOUTS[self.cfg.train.channels_last])
        return images, labels.to(self.ctx.device, non_blocking=True)

    def _fire(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # -- the loop ----------------------------------------------------------------------------------
    def train_step(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """One optimizer step over ``grad_accum_steps`` micro-batches: detached sums (loss × count, correct,
        count) and the gradient norm (NaN unless clipping or the log needs it), on the device and none read."""
        accum = self.cfg.train.grad_accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.ctx.device)
        correct = torch.zeros((), device=self.ctx.device, dtype=torch.long)
        count = 0
        for index, (images, labels) in enumerate(micro_batches):
            images, labels = self.to_device(images, labels)
            skip_sync = self.ctx.is_distributed and index != accum - 1
            with self.model.no_sync() if skip_sync else nullcontext():
                with self.autocast():
                    logits = self.model(images)
                    loss = self.loss(logits, labels)
                (loss / accum).backward()
            loss_sum += loss.detach() * labels.numel()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            count += labels.numel()
        self._fire("before_optimizer_step")
        want_norm = (self.step + 1) % self.cfg.train.log_every == 0
        grad_norm = clip_gradients(self.module, self.cfg.train.grad_clip_norm, want_norm, self.ctx.device)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._fire("on_step_end")
        # torch.full, not torch.tensor(count, device=...): a host-to-device copy of a Python number waits.
        return loss_sum, correct, torch.full((), count, device=self.ctx.device), grad_norm

    def train_epoch(self, epoch: int) -> EpochResult:
        self.model.train()
        seed_everything(epoch_seed(self.cfg.seed, epoch, self.ctx.rank))
        partial_epoch, self._partial = self._partial, None
        totals = torch.zeros(3, device=self.ctx.device, dtype=torch.float64)
        if partial_epoch:
            totals += torch.tensor(partial_epoch.totals, dtype=torch.float64).to(self.ctx.device)
        steps_per_epoch = self.train_loader.steps_in(epoch)  # fewer in a last, partial epoch
        self.monitor.start_epoch(epoch + 1, steps_per_epoch)
        done_before = partial_epoch.steps if partial_epoch else 0
        # A mid-epoch resume starts the loader at the checkpoint's step: the batches before it are skipped
        # without being read, and the random state is the checkpoint's (see dist_train/data/loader.py).
        groups = step_batches(self.train_loader, epoch, self.cfg.train.grad_accum_steps, done_before)
        for callback in self.callbacks:
            groups = callback.step_batches(self, groups)
        if partial_epoch:
            if partial_epoch.rng is not None:
                set_rng_state(partial_epoch.rng)
            self.monitor.advance(partial_epoch.steps)
        every, log_every = self.cfg.checkpoint.every_steps, self.cfg.train.log_every
        start = time.perf_counter()
        self._fire("on_epoch_start", epoch)
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
                if self.step % log_every == 0:
                    loss, norm = torch.stack([loss_sum / count, grad_norm.to(loss_sum.device)]).tolist()  # one read
                    values = {"train/step_loss": loss, "train/lr": self.scheduler.get_last_lr()[0]}
                    if not math.isnan(norm):
                        values["train/grad_norm"] = norm
                    self._fire("on_log", values)
                    self.monitor.log(self.step, values, epoch=epoch + 1)
                    self.monitor.advance(log_every, loss=loss)
                if vote.poll(GUARD.received):
                    break
            if vote.finish(GUARD.received):
                raise Terminated(checkpoint_on_sigterm(self, EpochProgress(index, totals.tolist())))
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
        started, first_epoch = time.perf_counter(), self.epoch
        val_loss, val_accuracy = float("nan"), float("nan")
        for epoch in range(first_epoch, self.total_epochs):
            if self.stop_requested:
                break
            # A SIGTERM from here to the epoch's checkpoint is recorded; every rank stops after that checkpoint.
            with GUARD.deferred():
                result = self.train_epoch(epoch)
                self.epoch, self.train_loss = epoch + 1, result.loss
                values = result.metrics()
                if not math.isfinite(result.loss):
                    self.diverged = True
                    self.stop_requested |= self.cfg.train.stop_on_divergence
                self._fire("on_epoch_end", values)
                last = self.epoch == self.total_epochs or self.stop_requested
                if last or self.epoch % self.cfg.train.eval_every == 0:
                    val_loss, val_accuracy = self.evaluate()
                    self.best_accuracy = max(self.best_accuracy, val_accuracy)
                    values |= {"val/loss": val_loss, "val/acc": val_accuracy}
                self.monitor.log(self.step, values, epoch=self.epoch)
                self.monitor.print(epoch_line(self.epoch, self.total_epochs, self.step, values))
                if self.diverged and self.stop_requested:
                    self.monitor.print(
                        f"training loss is {result.loss}: the run diverged; stopping (train.stop_on_divergence)"
                    )
                every = self.cfg.checkpoint.every_epochs
                if last or (every and self.epoch % every == 0):
                    self.save_checkpoint()
                stop_at_epoch_end(self)
        if self.epoch == first_epoch:  # nothing left to train: report the checkpoint's model
            val_loss, val_accuracy = self.evaluate()
        summary = run_summary(self, val_loss, val_accuracy, time.perf_counter() - started)
        for callback in self.callbacks:
            summary |= callback.on_fit_end(self)
        return summary

    # -- state: what a checkpoint holds (see dist_train.train_state) ------------------------------------
    state_dict = train_state.trainer_state
    load_state_dict = train_state.load_trainer_state
    save_checkpoint = train_state.save_checkpoint
