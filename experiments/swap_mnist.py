"""SWAP (Gupta, Akle Serrano & DeCoste 2020) against small- and large-batch training on real MNIST digits.

    python experiments/swap_mnist.py                      # ~3 min on 2 idle CPU cores
    python experiments/swap_mnist.py --seeds 1 --small-epochs 1 --phase1-max-epochs 2 --phase2-epochs 1
    python experiments/swap_mnist.py --smoke              # a check that it runs (2,048 images)

MNIST F1 on the real MNIST test set split 8,000 / 2,000 (fixed split seed), three methods per seed:

* SB: batch 32, lr 0.1, step decay at 60 % / 80 % of the epochs, one process (in this process);
* SWAP: two processes under torchrun (gloo on CPU, one thread each). Phase 1 is large-batch DDP
  (batch 512, lr scaled by sqrt(512 / 32) from the SB recipe, constant) until an epoch's training
  accuracy reaches ``--phase1-train-acc`` or ``--phase1-max-epochs``; phase 2 refines two independent
  replicas (one process each) with batch 32 and a cosine lr; phase 3 averages them and recomputes BN;
* LB: the phase-1 recipe (batch 512, sqrt-scaled lr) with step decay, one process, given as many
  epochs as fit in SWAP's mean wall time (timed per epoch by a short calibration run), unless
  ``--large-epochs`` fixes them.

Sequential updates: SB and LB count their optimizer steps; SWAP counts phase-1 steps plus the phase-2
steps of one replica (the replicas run side by side). Wall time is measured around each run by this
script; SWAP's includes starting torchrun and its two workers. Writes ``swap_mnist.md`` (table) and
``swap_mnist.json`` (raw summaries) to ``--out``. Runs are kept under ``--runs``: the same command
continues an interrupted experiment (finished runs are read back, their wall time with them).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MNIST_DATA,
    REPO,
    SMOKE_SUBSET,
    WALL,
    DataSpec,
    finished,
    mean_std,
    parse,
    plt,
    release_stale_lock,
    run,
    write_results,
)
from common import parser as experiment_parser

from dist_train.distributed import local_torchrun

COMMON = [
    "train.log_every=50",
    "train.grad_clip_norm=5",
    "checkpoint.every_epochs=1",
    "diffusion.every_steps=0",
    "data.num_workers=0",
]


@dataclass(frozen=True)
class Swap:
    """One SWAP experiment: the data and the defaults of its arguments."""

    spec: DataSpec
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = __doc__


def common(args: Any) -> list[str]:
    return [*COMMON, *(SMOKE_SUBSET if args.smoke else [])]


def small_overrides(args: Any, seed: int) -> list[str]:
    epochs = args.small_epochs
    return [
        *common(args),
        f"data.batch_size={args.small_batch}",
        f"optim.lr={args.lr}",
        f"train.epochs={epochs}",
        "schedule.name=step",
        f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]",
        f"seed={seed}",
    ]


def large_overrides(args: Any, seed: int, epochs: int, decay: bool) -> list[str]:
    """The large-batch recipe: the SB lr scaled by sqrt(B / B_small); step decay (LB) or constant (SWAP phase 1)."""
    schedule = (
        ["schedule.name=step", f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]"]
        if decay
        else ["schedule.name=constant", "schedule.milestones=[]"]
    )
    return [
        *common(args),
        f"data.batch_size={args.large_batch}",
        f"optim.lr={args.lr}",
        f"regime.reference_batch_size={args.small_batch}",
        "regime.lr_rule=sqrt",
        f"regime.warmup_epochs={args.warmup_epochs}",
        f"train.epochs={epochs}",
        *schedule,
        f"seed={seed}",
    ]


def swap_overrides(args: Any, seed: int) -> list[str]:
    return [
        *large_overrides(args, seed, args.phase1_max_epochs, decay=False),
        "swap.enabled=true",
        "swap.replica_size=1",
        f"swap.phase1_max_epochs={args.phase1_max_epochs}",
        f"swap.phase1_train_acc={args.phase1_train_acc}",
        f"swap.phase2.batch_size={args.small_batch}",
        f"swap.phase2.epochs={args.phase2_epochs}",
        f"swap.phase2.lr={args.phase2_lr}",
        "swap.phase2.schedule=cosine",
        "dist.backend=gloo",
        "device=cpu",
    ]


def run_swap(spec: DataSpec, name: str, overrides: list[str], out_dir: Path, nproc: int) -> dict[str, Any]:
    """One SWAP job: ``nproc`` CPU workers under torchrun, one thread each; the summary plus its wall time.

    A finished job (summary.json and the wall time beside it) is read back; an interrupted one resumes.
    """
    run_dir = out_dir / name
    started = time.perf_counter()
    if not ((run_dir / "summary.json").is_file() and (run_dir / WALL).is_file()):
        release_stale_lock(run_dir)
        cmd = [
            *local_torchrun(nproc),
            "-m",
            "dist_train",
            "train",
            "--config",
            str(spec.config),
            *spec.data,
            *overrides,
            f"out_dir={out_dir}",
            f"name={name}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"SWAP run {name} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
            )
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("config", None)
    summary["wall_seconds"] = finished(run_dir, started)
    return summary


def timed_run(spec: DataSpec, name: str, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """``common.run`` (building the data and model included in its wall time), without the eval curve."""
    summary = run(name, overrides, out_dir, spec)
    summary.pop("curve", None)
    return summary


def large_epochs_for(spec: DataSpec, budget: float, args: Any, work: Path) -> tuple[int, dict[str, Any]]:
    """How many LB epochs fit in ``budget`` seconds, from a 4-epoch calibration run.

    One epoch costs the median time between consecutive epoch records (training plus evaluation);
    the rest of the calibration run's wall time is the fixed set-up cost.
    """
    probe = timed_run(spec, "LB-calibration", large_overrides(args, 0, 4, decay=True), work)
    records = [json.loads(line) for line in (work / "LB-calibration" / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records if "val/acc" in r]
    per_epoch = statistics.median(b - a for a, b in itertools.pairwise(times))
    overhead = max(0.0, probe["wall_seconds"] - 4 * per_epoch)
    epochs = max(1, int((budget - overhead) / per_epoch))
    return epochs, {"per_epoch_s": per_epoch, "overhead_s": overhead, "budget_s": budget, "epochs": epochs}


def run_all(spec: DataSpec, args: Any, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"SB": [], "LB": [], "SWAP": []}
    for seed in range(args.seeds):
        summary = run_swap(spec, f"SWAP-seed{seed}", swap_overrides(args, seed), work, args.nproc)
        results["SWAP"].append(summary)
        phase1 = summary["phase1"]
        print(
            f"SWAP seed {seed}: phase 1 {phase1['epochs']} epochs / {phase1['steps']} steps "
            f"(threshold reached: {phase1['reached_threshold']}, val acc {phase1['val_acc']:.4f}); replicas "
            + ", ".join(f"{r['val_acc']:.4f}" for r in summary["replicas"])
            + f"; averaged {summary['val_acc']:.4f} after {summary['sequential_steps']} sequential updates, "
            f"{summary['wall_seconds']:.0f}s",
            flush=True,
        )
    budget = statistics.mean(s["wall_seconds"] for s in results["SWAP"])
    if args.large_epochs:
        large_epochs, calibration = args.large_epochs, {"epochs": args.large_epochs, "fixed": True}
    else:
        large_epochs, calibration = large_epochs_for(spec, budget, args, work)
    results["LB_calibration"] = calibration
    print(f"LB: {large_epochs} epochs for SWAP's mean wall time of {budget:.0f}s ({calibration})", flush=True)
    for seed in range(args.seeds):
        for name, overrides in (
            ("SB", small_overrides(args, seed)),
            ("LB", large_overrides(args, seed, large_epochs, decay=True)),
        ):
            summary = timed_run(spec, f"{name}-seed{seed}", overrides, work)
            results[name].append(summary)
            print(
                f"{name} seed {seed}: val acc {summary['val_acc']:.4f}, {summary['steps']} updates, "
                f"{summary['wall_seconds']:.0f}s",
                flush=True,
            )
    return results


def count(values: list[float]) -> str:
    """An integer that may vary over seeds: the value, or the mean and the range."""
    if min(values) == max(values):
        return f"{values[0]:g}"
    return f"{statistics.mean(values):.0f} ({min(values):g}–{max(values):g})"


def table(spec: DataSpec, results: dict[str, Any], args: Any) -> str:
    sb, lb, swap = results["SB"], results["LB"], results["SWAP"]
    large_lr = args.lr * (args.large_batch / args.small_batch) ** 0.5
    warmup = f", warm-up {args.warmup_epochs:g} epoch(s) from lr {args.lr:g}" if args.warmup_epochs else ""
    wall = {name: statistics.mean(r["wall_seconds"] for r in runs) for name, runs in (("SB", sb), ("LB", lb))}
    swap_wall = statistics.mean(r["wall_seconds"] for r in swap)
    phase1_epochs = [r["phase1"]["epochs"] for r in swap]
    phase1_steps = [r["phase1"]["steps"] for r in swap]
    reached = sum(r["phase1"]["reached_threshold"] for r in swap)
    replica_steps = [r["replicas"][0]["steps"] for r in swap]
    lines = [
        f"{spec.description}, {args.seeds} seed(s), 2-core CPU. "
        f"SB and LB: one process; SWAP: {args.nproc} processes (torchrun, gloo, one thread each), phase 1 "
        f"until training accuracy {args.phase1_train_acc:.0%} (reached in {reached}/{len(swap)} seeds) or "
        f"{args.phase1_max_epochs} epochs, then {args.nproc} replicas × {args.phase2_epochs} epoch(s) of batch "
        f"{args.small_batch}, cosine lr from {args.phase2_lr:g}. Sequential updates: SWAP counts phase 1 plus one "
        f"replica's phase 2. Large batches: lr {args.lr:g} × sqrt({args.large_batch} / {args.small_batch}){warmup}.",
        "",
        "| method | batch | lr | epochs | sequential updates | val acc % (mean ± std) "
        "| replicas before averaging, val acc % | wall s/run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| SB | {args.small_batch} | {args.lr:g} (step) | {sb[0]['epochs']} | {count([r['steps'] for r in sb])} | "
        f"{mean_std([r['val_acc'] for r in sb])} | — | {wall['SB']:.0f} |",
        f"| LB, SWAP's wall time | {args.large_batch} | {large_lr:.3g} (step) | {lb[0]['epochs']} | "
        f"{count([r['steps'] for r in lb])} | {mean_std([r['val_acc'] for r in lb])} | — | {wall['LB']:.0f} |",
        f"| SWAP phase 1 alone | {args.large_batch} | {large_lr:.3g} (constant) | {count(phase1_epochs)} | "
        f"{count(phase1_steps)} | {mean_std([r['phase1']['val_acc'] for r in swap])} | — | (part of SWAP) |",
        f"| SWAP (phase 1 + 2 + average) | {args.large_batch} → {args.small_batch} | {large_lr:.3g} → "
        f"{args.phase2_lr:g} (cosine) | {count(phase1_epochs)} + {args.phase2_epochs} | "
        f"{count([p + q for p, q in zip(phase1_steps, replica_steps, strict=True)])} | "
        f"{mean_std([r['val_acc'] for r in swap])} | {mean_std([r['replica_mean_val_acc'] for r in swap])} | "
        f"{swap_wall:.0f} |",
    ]
    return "\n".join(lines) + "\n"


def plot(spec: DataSpec, results: dict[str, Any], path: Path) -> None:
    """Validation accuracy (mean ± std over seeds) against sequential updates, one point per method."""
    swap = results["SWAP"]
    points = {
        "SB": ([r["steps"] for r in results["SB"]], [r["val_acc"] for r in results["SB"]]),
        "LB, SWAP's wall time": ([r["steps"] for r in results["LB"]], [r["val_acc"] for r in results["LB"]]),
        "SWAP phase 1 alone": ([r["phase1"]["steps"] for r in swap], [r["phase1"]["val_acc"] for r in swap]),
        "SWAP replicas (mean)": ([r["sequential_steps"] for r in swap], [r["replica_mean_val_acc"] for r in swap]),
        "SWAP (averaged)": ([r["sequential_steps"] for r in swap], [r["val_acc"] for r in swap]),
    }
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, (steps, accuracy) in points.items():
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        axis.errorbar(
            statistics.mean(steps), 100 * statistics.mean(accuracy), yerr=100 * spread, fmt="o", capsize=4, label=name
        )
    axis.set_xscale("log")
    axis.set_xlabel("sequential updates (log scale)")
    axis.set_ylabel("validation accuracy % (mean ± std over seeds)")
    axis.set_title(f"SWAP, {spec.description.split(' (')[0]}")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(experiment: Swap) -> None:
    parser = experiment_parser(experiment.doc)
    parser.add_argument("--small-batch", type=int, default=32)
    parser.add_argument("--large-batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.1, help="lr of the small-batch recipe (sqrt-scaled for LB)")
    parser.add_argument("--warmup-epochs", type=float, default=0.0, help="LB and phase 1: regime.warmup_epochs")
    parser.add_argument("--small-epochs", type=int, default=10)
    parser.add_argument("--large-epochs", type=int, default=0, help="0: as many as fit in SWAP's mean wall time")
    parser.add_argument("--phase1-train-acc", type=float, default=0.97)
    parser.add_argument("--phase1-max-epochs", type=int, default=15)
    parser.add_argument("--phase2-epochs", type=int, default=2)
    parser.add_argument("--phase2-lr", type=float, default=0.05)
    parser.add_argument("--nproc", type=int, default=2, help="SWAP processes = replicas (one process each)")
    parser.set_defaults(**experiment.defaults)
    args = parse(parser)
    if args.smoke:
        args.small_epochs, args.phase1_max_epochs, args.phase2_epochs = 1, 2, 1
    stem = f"swap_{experiment.spec.key}"
    results = run_all(experiment.spec, args, args.runs / stem)
    results["settings"] = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    write_results(args.out, stem, table(experiment.spec, results, args), results)
    plot(experiment.spec, results, args.out / f"{stem}.png")


if __name__ == "__main__":
    main(Swap(MNIST_DATA))
