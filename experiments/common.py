"""Helpers shared by the experiments: the real-MNIST split, one training run, mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

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
