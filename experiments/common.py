"""Helpers shared by the experiments: the real-MNIST split, one training run, mean ± std."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dist_train.config import load_config
from dist_train.run import train

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
MNIST_SPLIT = [f"data.root={MNIST}", "data.val_fraction=0.2", "data.split_seed=0"]  # fixed 8,000 / 2,000


def run(name: str, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """Train ``configs/mnist_f1_sb.yaml`` with ``overrides`` in this process; the summary plus the eval curve."""
    cfg = load_config(
        REPO / "configs" / "mnist_f1_sb.yaml", [*MNIST_SPLIT, *overrides, f"out_dir={out_dir}", f"name={name}"]
    )
    summary = train(cfg)
    records = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    summary["curve"] = [(r["step"], r["val/acc"]) for r in records if "val/acc" in r]
    summary.pop("config", None)
    return summary


def mean_std(values: list[float], scale: float = 100.0) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * spread:.2f}"


def parser(doc: str | None, seeds: int = 3) -> argparse.ArgumentParser:
    """The arguments every experiment takes: ``--seeds`` and ``--out``."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--seeds", type=int, default=seeds)
    result.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    return result


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    labels: tuple[str, str, str],
    log_x: bool = False,
    marker: str | None = None,
) -> None:
    """One line per series; ``labels`` are (x label, y label, title)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        axis.plot(xs, ys, label=name, marker=marker)
    if log_x:
        axis.set_xscale("log")
    axis.set_xlabel(labels[0])
    axis.set_ylabel(labels[1])
    axis.set_title(labels[2])
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
