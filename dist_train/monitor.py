"""What a run reports: TensorBoard scalars, ``metrics.jsonl`` and a progress bar.

Only rank 0 holds a real Monitor; the other ranks get one that does nothing, so
the trainer never asks which rank it is before logging.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from dist_train.jsonio import dumps
from dist_train.rundir import History, rewind_metrics


class Monitor:
    """Writes scalars to TensorBoard (``tb/``) and JSON lines (``metrics.jsonl``) in the run directory."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        """``resume_step``: the step of the checkpoint being resumed; None starts the records afresh.

        Records an earlier attempt wrote after that step are moved to ``history/`` (see
        :func:`~dist_train.rundir.rewind_metrics`), so only construct a Monitor once the run
        has passed every check.
        """
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history = History(run_dir)
        self.moved_aside = rewind_metrics(run_dir, resume_step if resume_step is not None else -1, self.history)
        # purge_step hides events that an earlier attempt wrote after the checkpoint we resume from.
        purge_step = resume_step + 1 if resume_step is not None else 0
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
        self._metrics = self.metrics_path.open("a")
        self._bar: tqdm | None = None

    def log(self, step: int, values: dict[str, float], **fields: Any) -> None:
        """One record: scalars to TensorBoard under their tags, everything to metrics.jsonl."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        record = {"step": step, "time": round(time.time(), 3), **fields, **values}
        self._metrics.write(dumps(record) + "\n")
        self._metrics.flush()

    def event(self, step: int, event: str, **fields: Any) -> None:
        """A non-scalar record (start, resume, end) in metrics.jsonl."""
        self._metrics.write(dumps({"step": step, "event": event, **fields}) + "\n")
        self._metrics.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: torch.Tensor, step: int = 0) -> None:
        """A C×H×W float image in [0, 1]."""
        self.writer.add_image(tag, image, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """The hparams summary (HPARAMS tab) in the run's own event file, next to its scalars."""
        simple = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
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
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.end_epoch()
        self.writer.close()
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
