"""Helpers shared by the experiments: the datasets, one (resumable) training run, mean ± std, plots.

Runs that are given a lasting ``out_dir`` (``--runs``, default ``runs/experiments/``) make an
experiment resumable: a run whose ``summary.json`` exists is read back instead of trained, and
an interrupted one continues from its last checkpoint (``resume=auto``). So a killed experiment,
started again with the same command, carries on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dist_train.config import load_config
from dist_train.run import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
RUNS = REPO / "runs" / "experiments"
MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
MNIST_SPLIT = [f"data.root={MNIST}", "data.val_fraction=0.2", "data.split_seed=0"]  # fixed 8,000 / 2,000
MNIST_CONFIG = REPO / "configs" / "mnist_f1_sb.yaml"
FASHION_CONFIG = REPO / "configs" / "fashion_mnist_f1_sb.yaml"
"""Fashion-MNIST, its real 60,000 / 10,000 split, from the config's default root."""
SMOKE_SUBSET = ["data.train_subset=2048", "train.eval_every=1"]
"""What ``--smoke`` adds to every run: a 2,048-image training subset."""


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def run(
    name: str,
    overrides: list[str],
    out_dir: Path,
    config: Path = MNIST_CONFIG,
    data: list[str] | None = None,
) -> dict[str, Any]:
    """Train ``config`` with ``data`` and ``overrides`` in this process; the summary plus the eval curve.

    ``data`` defaults to the real-MNIST split for the MNIST config and to nothing otherwise. A run
    whose summary.json exists is not trained again; an interrupted one resumes (``resume=auto``).
    ``wall_seconds`` is measured around the call (for a read-back run: its recorded training time).
    """
    data = (MNIST_SPLIT if config == MNIST_CONFIG else []) if data is None else data
    summary_path = out_dir / name / "summary.json"
    started = time.perf_counter()
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["wall_seconds"] = summary["train_seconds"]
    else:
        summary = train(load_config(config, [*data, *overrides, f"out_dir={out_dir}", f"name={name}"]))
        summary["wall_seconds"] = time.perf_counter() - started
    summary["curve"] = [(r["step"], r["val/acc"]) for r in read_records(out_dir / name) if "val/acc" in r]
    summary.pop("config", None)
    return summary


def write_results(out: Path, stem: str, table: str, raw: Any) -> None:
    """``stem.md`` (the table) and ``stem.json`` (the raw summaries) in ``out``; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(table)


def mean_std(values: list[float], scale: float = 100.0) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * spread:.2f}"


def parser(doc: str | None, seeds: int = 3) -> argparse.ArgumentParser:
    """The arguments every experiment takes: ``--seeds``, ``--out`` (results), ``--runs`` (run
    directories, kept so that the experiment resumes) and ``--smoke``."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--seeds", type=int, default=seeds)
    result.add_argument("--out", type=Path, default=RESULTS)
    result.add_argument("--runs", type=Path, default=RUNS, help="where the runs go (default runs/experiments)")
    result.add_argument(
        "--smoke",
        action="store_true",
        default=bool(os.environ.get("DIST_TRAIN_SMOKE")),
        help="a tiny version that only checks the script runs (1 seed, a 2,048-image subset, few epochs); "
        "runs and results go under runs/experiments-smoke/ (also DIST_TRAIN_SMOKE=1)",
    )
    return result


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the arguments; ``--smoke`` moves runs and results aside and keeps one seed."""
    args = parser.parse_args()
    if args.smoke:
        args.seeds = 1
        if args.runs == RUNS:
            args.runs = RUNS.with_name("experiments-smoke")
        if args.out == RESULTS:
            args.out = args.runs / "results"
    return args


def mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else float("nan")


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
