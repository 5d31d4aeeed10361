"""A clean stop on SIGTERM: ``scancel``, a preemption without requeue, ``timeout``, torchrun shutting down.

SIGTERM reaches every rank (torchrun and SLURM signal all the tasks of a job). While training steps
run, a rank only records it; after every step the ranks agree, through a one-element all-reduce that
is started after one step and read after the next (so no step waits for it), whether any of them
received it. All ranks then stop after the same step, write a checkpoint if there is time for one
(``checkpoint.sigterm_budget_s`` against the time the last save took), and leave: the run directory's
lock is released on the way out, rank 0 prints one line saying where the run stopped and which
checkpoint it resumes from, and the process exits with status 143 (128 + SIGTERM).

A signal that comes after an epoch's last step (while its metrics are summed, the model evaluated and its
checkpoint written) is recorded the same way: the epoch's end completes on every rank, the ranks agree once
more, and all of them stop there, the checkpoint of that epoch written. Only at start-up does the signal end
the process at once, the way Ctrl-C does: the lock is released and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.distributed as dist

    from dist_train.train_state import EpochProgress
    from dist_train.trainer import Trainer

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(Exception):
    """The run was stopped by SIGTERM; the message says where and what it resumes from."""


class SigtermGuard:
    """This process's SIGTERM handler while a run is on (installed by :func:`catch_sigterm`)."""

    def __init__(self) -> None:
        self.received_at: float | None = None
        """``time.monotonic()`` when the signal came; None until then."""
        self._deferring = False

    @property
    def received(self) -> bool:
        return self.received_at is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
        if not self._deferring:
            raise Terminated("stopped by SIGTERM outside a training step: no checkpoint written")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a SIGTERM is only recorded: the training loop polls :class:`StopVote` and stops."""
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer

    def seconds_since(self) -> float:
        return 0.0 if self.received_at is None else time.monotonic() - self.received_at


GUARD = SigtermGuard()
"""The guard of this process (signal handlers are per process)."""


@contextmanager
def catch_sigterm() -> Iterator[SigtermGuard]:
    """Install :data:`GUARD` as the SIGTERM handler for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield GUARD
        return
    previous: Any = signal.signal(signal.SIGTERM, GUARD.handle)
    GUARD.received_at = None
    try:
        yield GUARD
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopVote:
    """Whether any rank of ``group`` received SIGTERM, agreed one step late and without waiting in a step.

    :meth:`poll` after every step returns the answer of the all-reduce started at the previous poll (long
    finished by then), and starts the next one; every rank gets the same answer at the same step.
    """

    def __init__(self, group: dist.ProcessGroup | None, distributed: bool) -> None:
        import torch  # here, not at the top: the CLI imports this module and must start fast

        self.group = group
        self.distributed = distributed
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.work: Any = None

    def poll(self, local: bool) -> bool:
        if not self.distributed:
            return local
        decided = self._settle()
        self.flag.fill_(int(local))
        self.work = self.flag_all_reduce(async_op=True)
        return decided

    def flag_all_reduce(self, async_op: bool) -> Any:
        import torch.distributed as dist

        return dist.all_reduce(self.flag, group=self.group, async_op=async_op)

    def _settle(self) -> bool:
        if self.work is None:
            return False
        self.work.wait()
        self.work = None
        return bool(self.flag.numpy()[0])

    def finish(self, local: bool) -> bool:
        """The last answer, and the state of every rank now (a blocking collective, at the end of the steps)."""
        if not self.distributed:
            return local
        decided = self._settle()
        self.flag.fill_(int(local))
        self.flag_all_reduce(async_op=False)
        return decided or bool(self.flag.numpy()[0])


def checkpoint_on_sigterm(trainer: Trainer, progress: EpochProgress | None) -> str:
    """Checkpoint at ``progress`` (None: at the end of the epoch just completed, unless its checkpoint is written
    already) when the last save fits in what is left of ``checkpoint.sigterm_budget_s`` (every rank agrees);
    the line that says where the run stopped and where it resumes."""
    import torch
    import torch.distributed as dist

    if progress is None:
        where = f"stopped by SIGTERM at the end of epoch {trainer.epoch} (step {trainer.step})"
        if trainer.last_save[0] == trainer.step:
            trainer.monitor.event(trainer.step, "stopped", signal="SIGTERM", checkpoint=True)
            return f"{where}: checkpoint {trainer.checkpoint_path} written; the run resumes there"
    else:
        where = f"stopped by SIGTERM after step {trainer.step} (epoch {trainer.epoch + 1}, step {progress.steps} of it)"
    budget = trainer.cfg.checkpoint.sigterm_budget_s
    left = budget - GUARD.seconds_since()
    last_step, last_seconds = trainer.last_save
    skip = torch.tensor([int(last_seconds > left)], dtype=torch.int32)
    if trainer.ctx.is_distributed:
        dist.all_reduce(skip, group=trainer.ctx.cpu_group)
    if skip.item():
        trainer.monitor.event(trainer.step, "stopped", signal="SIGTERM", checkpoint=False)
        resumes = f"resumes from step {last_step}" if last_step is not None else "starts again from step 0"
        return (
            f"{where}: no checkpoint (the last took {last_seconds:.1f} s, more than the {max(left, 0):.1f} s "
            f"left of checkpoint.sigterm_budget_s={budget:g}); the run {resumes}"
        )
    trainer.save_checkpoint(progress)
    trainer.monitor.event(trainer.step, "stopped", signal="SIGTERM", checkpoint=True)
    return (
        f"{where}: checkpoint {trainer.checkpoint_path} written in {trainer.last_save[1]:.1f} s; the run resumes there"
    )


def stop_at_epoch_end(trainer: Trainer) -> None:
    """After an epoch's evaluation and checkpoint: every rank stops there if any got SIGTERM since the last vote."""
    if StopVote(trainer.ctx.cpu_group, trainer.ctx.is_distributed).finish(GUARD.received):
        raise Terminated(checkpoint_on_sigterm(trainer, None))
