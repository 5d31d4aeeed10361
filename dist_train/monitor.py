"""What a run reports: TensorBoard scalars, ``metrics.jsonl`` and a progress bar.

Only rank 0 holds a real Monitor; the other ranks get one that does nothing, so
the trainer never asks which rank it is before logging.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from dist_train.dashboard import LAYOUT, OVERVIEW
from dist_train.errors import ResourceError
from dist_train.jsonio import dumps
from dist_train.rundir import History, events_dir, rewind_metrics

if TYPE_CHECKING:
    from dist_train.trainer import Trainer


def epoch_line(epoch: int, total_epochs: int, step: int, values: dict[str, float]) -> str:
    """The console line of an epoch: training loss and accuracy, validation's when evaluated, speed, time."""
    line = (
        f"epoch {epoch}/{total_epochs} step {step} | "
        f"train loss {values['train/loss']:.4f} acc {values['train/acc']:.2%} | "
    )
    if "val/acc" in values:
        line += f"val loss {values['val/loss']:.4f} acc {values['val/acc']:.2%} | "
    if "noise/b_simple" in values:
        b_simple = values["noise/b_simple"]
        # nan: the averaged |G|² is not above 0, the gradient lost in its noise at the measured batch sizes
        line += f"noise scale {b_simple:.4g} | " if math.isfinite(b_simple) else "noise scale unresolved (|G|² ≤ 0) | "
    return line + f"{values['train/images_per_s']:.0f} img/s | {values['train/epoch_time_s']:.1f}s"


def run_summary(trainer: Trainer, val_loss: float, val_accuracy: float, seconds: float) -> dict[str, Any]:
    """The loop's part of a run's summary (``summary.json``; the callbacks add theirs)."""
    return {
        "name": trainer.cfg.name,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_loss": trainer.train_loss,
        "diverged": trainer.diverged,
        "val_loss": val_loss,
        "val_acc": val_accuracy,
        "best_val_acc": trainer.best_accuracy,
        "world_size": trainer.ctx.world_size,
        "batch_size": trainer.cfg.data.batch_size,
        "lr": trainer.optimizer.param_groups[0]["initial_lr"],  # as planned by the regime
        "train_seconds": seconds,
    }


def check_records(run_dir: Path) -> None:
    """Raise the OSError that writing the run's records would meet (``metrics.jsonl`` or the events folder not
    writable), before anything is written."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.open("a").close()  # opening to append changes nothing; an immutable file refuses it
    for folder in (events_dir(run_dir), run_dir):
        if folder.is_dir() and not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


@contextlib.contextmanager
def writing(what: Path) -> Iterator[None]:
    """A failed write of the records (a full disk) as one ResourceError line naming ``what``."""
    try:
        yield
    except OSError as e:
        raise ResourceError(f"cannot write {what}: {e.strerror or e}") from None


def _quiet_writer_threads(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread dies on a failed write and hands the error to the next call that writes
    (reported then, by :func:`writing`): its own traceback is not printed."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _previous_hook(args)


_previous_hook = threading.excepthook
threading.excepthook = _quiet_writer_threads


class Monitor:
    """Writes TensorBoard events and JSON lines (``metrics.jsonl``) in the run directory."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, label: str = "") -> None:
        """``resume_step``: the step of the checkpoint being resumed; None starts the records afresh.
        ``label``: what each console line starts with, in brackets (``[replica 1]``; empty: nothing).

        Records an earlier attempt wrote after that step are moved to ``history/`` (see
        :func:`~dist_train.rundir.rewind_metrics`), so only construct a Monitor once the run
        has passed every check.
        """
        self.run_dir = run_dir
        self.prefix = f"[{label}] " if label else ""
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history = History(run_dir)
        self.moved_aside = rewind_metrics(run_dir, resume_step if resume_step is not None else -1, self.history)
        # purge_step hides events that an earlier attempt wrote after the checkpoint we resume from.
        purge_step = resume_step + 1 if resume_step is not None else 0
        self.tb_dir = events_dir(run_dir)
        with writing(self.metrics_path):
            self._metrics = self.metrics_path.open("a")
        with writing(self.tb_dir):
            self.writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge_step)
            if resume_step is None:
                self.writer.add_custom_scalars(LAYOUT)
        self._bar: tqdm | None = None

    def log(self, step: int, values: dict[str, float], **fields: Any) -> None:
        """One record: scalars to TensorBoard under their tags (and those of :data:`~dist_train.dashboard.OVERVIEW`
        also under ``Overview/``), everything to metrics.jsonl."""
        with writing(self.tb_dir):
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
                if tag in OVERVIEW:
                    self.writer.add_scalar(OVERVIEW[tag], value, step)
        record = {"step": step, "time": round(time.time(), 3), **fields, **values}
        self._append(record)

    def event(self, step: int, event: str, **fields: Any) -> None:
        """A non-scalar record (start, resume, end) in metrics.jsonl."""
        self._append({"step": step, "event": event, **fields})

    def _append(self, record: dict[str, Any]) -> None:
        with writing(self.metrics_path):
            self._metrics.write(dumps(record) + "\n")
            self._metrics.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        with writing(self.tb_dir):
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: torch.Tensor, step: int = 0) -> None:
        """A C×H×W float image in [0, 1]."""
        with writing(self.tb_dir):
            self.writer.add_image(tag, image, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """The hparams summary (HPARAMS tab) in the run's own event file, next to its scalars."""
        simple = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        with writing(self.tb_dir):
            for summary in hparams(simple, metrics):
                self.writer.file_writer.add_summary(summary)

    def start_epoch(self, epoch: int, total_steps: int) -> None:
        disable = not sys.stderr.isatty()
        self._bar = tqdm(total=total_steps, desc=f"epoch {epoch}", leave=False, disable=disable, dynamic_ncols=True)

    def advance(self, steps: int = 1, **postfix: float) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def print(self, message: str) -> None:
        """A line on the console (rank 0 only)."""
        tqdm.write(self.prefix + message, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.end_epoch()
        try:
            with writing(self.tb_dir):
                self.writer.close()
        finally:
            with writing(self.metrics_path):
                self._metrics.close()


class NullMonitor(Monitor):
    """The monitor of ranks other than 0: accepts everything, writes nothing."""

    def __init__(self) -> None:
        pass

    def log(self, step: int, values: dict[str, float], **fields: Any) -> None:
        pass

    def event(self, step: int, event: str, **fields: Any) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def image(self, tag: str, image: torch.Tensor, step: int = 0) -> None:
        pass

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def start_epoch(self, epoch: int, total_steps: int) -> None:
        pass

    def advance(self, steps: int = 1, **postfix: float) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def print(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass
