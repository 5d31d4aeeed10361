"""What the gradient noise scale predicts about other batch sizes (McCandlish et al. 2018), without torch.

With B_noise the noise scale, a batch of B needs S = S_min·(1 + B_noise/B) steps and E = E_min·(1 + B/B_noise)
samples to reach a given loss: well below B_noise a larger batch cuts the steps almost in proportion, well
above it the steps hardly fall while the samples grow. The critical batch, where both costs are twice their
minimum, is B_noise itself. :mod:`dist_train.techniques.noise_scale` measures B_simple, the estimate of
B_noise used here; this module reads it back from a run and turns it into a table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from dist_train.errors import DistTrainError
from dist_train.rundir import recorded_config

SUMMARY_KEY = "noise_scale"
"""The key of the measurement in a run's summary.json."""
NOT_MEASURED = "no gradient noise scale measured (train it with noise_scale.every_steps=N, e.g. 20)"


def estimates(b_small: float, sq_small: float, b_big: float, sq_big: float) -> tuple[float, float]:
    """Unbiased (|G|², tr(Σ)) from the mean squared norm ``sq_small`` of gradients over ``b_small`` samples and
    ``sq_big`` of gradients over ``b_big`` samples (E|G_B|² = |G|² + tr(Σ)/B)."""
    grad_sq = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace_sigma = (sq_small - sq_big) / (1 / b_small - 1 / b_big)
    return grad_sq, trace_sigma


def steps_ratio(batch: float, b_noise: float) -> float:
    """S / S_min at batch ``batch``: 1 + B_noise / B."""
    return 1 + b_noise / batch


def samples_ratio(batch: float, b_noise: float) -> float:
    """E / E_min at batch ``batch``: 1 + B / B_noise."""
    return 1 + batch / b_noise


def batches_around(*batches: float, octaves: int = 3) -> list[int]:
    """Powers of two from ``octaves`` below the smallest of ``batches`` to ``octaves`` above the largest."""
    finite = [b for b in batches if math.isfinite(b) and b > 0]
    low = max(0, math.floor(math.log2(min(finite))) - octaves)
    high = math.ceil(math.log2(max(finite))) + octaves
    return [2**k for k in range(low, high + 1)]


def prediction_table(b_noise: float, run_batch: int, batches: list[int] | None = None) -> str:
    """A text table of the predicted steps and samples, relative to their minimum, at each of ``batches``
    (default: powers of two around the run's batch and B_noise); the run's own batch is marked."""
    rows = batches or batches_around(run_batch, b_noise)
    if run_batch not in rows:
        rows = sorted({*rows, run_batch})
    lines = ["  batch   steps/S_min   samples/E_min   steps vs this run"]
    for batch in rows:
        vs_run = steps_ratio(batch, b_noise) / steps_ratio(run_batch, b_noise)
        mark = "  <- this run" if batch == run_batch else ""
        lines.append(
            f"{batch:>7}   {steps_ratio(batch, b_noise):>11.2f}   {samples_ratio(batch, b_noise):>13.2f}"
            f"   {vs_run:>16.2f}×{mark}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Measured:
    """A run's measured noise scale."""

    b_simple: float
    epoch: int
    """The epoch it was last measured in (1-based)."""
    batch: int
    """The run's global batch (distinct samples per optimizer step)."""
    per_epoch: list[tuple[int, float]]
    """(epoch, B_simple at its end) for each epoch measured."""

    def critical_line(self) -> str:
        when = f" at epoch {self.epoch}" if self.epoch else ""
        return f"critical batch ≈ {self.b_simple:,.0f}{when} (this run's batch: {self.batch:,})"


def read_measured(run_dir: Path) -> Measured:
    """The noise scale a run measured: from its summary.json, or, while it runs, from its metrics.jsonl."""
    config = recorded_config(run_dir)
    if config is None:
        raise DistTrainError(f"{run_dir}: {NOT_MEASURED}")
    summary, metrics = run_dir / "summary.json", run_dir / "metrics.jsonl"
    record = (json.loads(summary.read_text()) if summary.is_file() else {}).get(SUMMARY_KEY) or {}
    # null: an epoch whose averaged |G|² was not above 0 (unresolved); the prediction uses the last resolved one
    per_epoch = [(int(e), float(v)) for e, v in record.get("per_epoch", []) if v is not None]
    if not per_epoch and metrics.is_file():  # a run still training: its epoch records
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        epochs = {
            int(r["epoch"]): float(r["noise/b_simple"])
            for r in rows
            if r.get("noise/b_simple") is not None and "train/loss" in r
        }
        per_epoch = sorted(epochs.items())
    if not per_epoch:
        raise DistTrainError(f"{run_dir}: {NOT_MEASURED}")
    epoch, b_simple = per_epoch[-1]
    return Measured(b_simple, epoch, int(record.get("batch", config["data"]["batch_size"])), per_epoch)


def describe_prediction(measured: Measured, batches: list[int] | None = None) -> str:
    """The critical-batch line and the table, for ``dist-train noise`` and ``dist-train plan``."""
    if not (math.isfinite(measured.b_simple) and measured.b_simple > 0):
        return f"noise scale {measured.b_simple} at epoch {measured.epoch}: not a positive number, so no prediction"
    history = ""
    if len(measured.per_epoch) > 1:
        history = "\nB_simple by epoch: " + ", ".join(f"{e}: {v:,.0f}" for e, v in measured.per_epoch)
    return f"{measured.critical_line()}{history}\n{prediction_table(measured.b_simple, measured.batch, batches)}"


def given_noise_scale(value: str, batch: int) -> Measured:
    """``value``, a noise scale (a positive number) or a run directory that measured one, for a run of global
    batch ``batch`` (a run directory's own batch is kept only when ``batch`` is 0)."""
    try:
        number = float(value)
    except ValueError:
        if not Path(value).is_dir():
            raise DistTrainError(f"--noise-scale {value!r}: neither a number nor a run directory") from None
        measured = read_measured(Path(value))
        return replace(measured, batch=batch or measured.batch)
    if not (math.isfinite(number) and number > 0):
        raise DistTrainError(f"--noise-scale must be a positive number, got {value}")
    return Measured(number, 0, batch, [])


def parse_batches(text: str) -> list[int]:
    """``--batch-sizes 64,128,256`` as a sorted list; a one-line error for anything else."""
    try:
        batches = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        batches = []
    if not batches or batches[0] < 1:
        raise DistTrainError(f"--batch-sizes must be positive integers separated by commas, got {text!r}")
    return batches
