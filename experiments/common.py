"""Helpers shared by the experiments: the datasets, one (resumable) training run, mean ± std, plots.

Runs that are given a lasting ``out_dir`` (``--runs``, default ``runs/experiments/``) make an
experiment resumable: a run whose ``summary.json`` exists is read back instead of trained, and
an interrupted one continues from its last checkpoint (``resume=auto``), once the run lock its
killed attempt left is removed (:func:`release_stale_lock`). So a killed experiment, started again
with the same command, carries on where it stopped.

``python experiments/common.py release-stale-locks DIR...`` does the lock part for every run under
DIR (the sweep scripts call it before resuming a sweep).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dist_train.config import load_config
from dist_train.run import train
from dist_train.rundir import LOCK, RunLockedError, clear_stale_lock

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
RUNS = REPO / "runs" / "experiments"
MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
MNIST_SPLIT = [f"data.root={MNIST}", "data.val_fraction=0.2", "data.split_seed=0"]  # fixed 8,000 / 2,000
SMOKE_SUBSET = ["data.train_subset=2048", "train.eval_every=1"]
"""What ``--smoke`` adds to every run: a 2,048-image training subset."""
WALL = "wall.json"
"""Beside a finished run's summary.json: the wall time this script measured around it."""


@dataclass(frozen=True)
class DataSpec:
    """The data an experiment trains on: a base config, the overrides that select the data, and its name."""

    key: str
    """Suffix of the result files (``gap_<key>.md``)."""
    config: Path
    data: tuple[str, ...]
    description: str
    """How the tables describe it."""


MNIST_DATA = DataSpec(
    "mnist",
    REPO / "configs" / "mnist_f1_sb.yaml",
    tuple(MNIST_SPLIT),
    "MNIST F1 on real MNIST digits (8,000 train / 2,000 validation)",
)
FASHION_DATA = DataSpec(
    "fashion_mnist",
    REPO / "configs" / "fashion_mnist_f1_sb.yaml",
    (),
    "MNIST F1 on Fashion-MNIST (the real 60,000 train / 10,000 test split)",
)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def finished(run_dir: Path, started: float) -> float:
    """Record (once) and return the wall time of a run that has just written its summary.json."""
    wall = run_dir / WALL
    if not wall.is_file():
        wall.write_text(json.dumps({"wall_seconds": time.perf_counter() - started}))
    return json.loads(wall.read_text())["wall_seconds"]


def release_stale_lock(run_dir: Path) -> None:
    """Clear the run lock a killed attempt of this experiment left behind (its holder is gone), so that
    the run resumes; a lock whose holder may still run stays, and the run then says so."""
    with contextlib.suppress(RunLockedError):
        removed = clear_stale_lock(run_dir)
        if removed:
            print(removed, flush=True)


def run(name: str, overrides: list[str], out_dir: Path, spec: DataSpec = MNIST_DATA) -> dict[str, Any]:
    """Train ``spec``'s config with ``overrides`` in this process; the summary plus the eval curve.

    A run whose summary.json exists is read back, not trained again; an interrupted one resumes
    (``resume=auto``). ``wall_seconds``: measured around the run (around its last attempt when it
    was interrupted; its training time when it was not run by this script).
    """
    run_dir = out_dir / name
    started = time.perf_counter()
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        wall = json.loads((run_dir / WALL).read_text()) if (run_dir / WALL).is_file() else {}
        summary["wall_seconds"] = wall.get("wall_seconds", summary["train_seconds"])
    else:
        release_stale_lock(run_dir)
        summary = train(load_config(spec.config, [*spec.data, *overrides, f"out_dir={out_dir}", f"name={name}"]))
        summary["wall_seconds"] = finished(run_dir, started)
    summary["curve"] = [(r["step"], r["val/acc"]) for r in read_records(run_dir) if "val/acc" in r]
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


if __name__ == "__main__":
    if sys.argv[1:2] != ["release-stale-locks"]:
        sys.exit("usage: python experiments/common.py release-stale-locks DIR...")
    for folder in map(Path, sys.argv[2:]):
        for lock in sorted(folder.rglob(LOCK)) if folder.is_dir() else []:
            release_stale_lock(lock.parent)
