"""The large-batch generalization gap on real MNIST digits, and the fixes of Hoffer et al. (2017).

    python experiments/gap_mnist.py                       # ~15 min on 2 CPU cores
    python experiments/gap_mnist.py --seeds 1 --epochs 2  # a quick look
    python experiments/gap_mnist.py --smoke               # a check that it runs (2,048 images)

MNIST "F1" on the real MNIST test set split 8,000 / 2,000 (fixed split seed),
trained in one process with a small batch B and with 32·B in five variants:
SB, LB, LB+LR (sqrt lr scaling), LB+LR+GBN (ghost batches of B), LB+LR+GBN+RA
(regime adaptation: as many updates as SB). Writes a markdown table (mean ± std
validation accuracy over seeds, updates, wall time, diffusion slope) and a plot
of ||w_t - w_0|| against log t to ``--out``. Runs are kept under ``--runs``: the
same command continues an interrupted experiment.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from common import MNIST_DATA, SMOKE_SUBSET, DataSpec, line_plot, mean_std, parse, run, write_results
from common import parser as experiment_parser

VARIANTS = {
    "SB": [],
    "LB": ["large"],
    "LB+LR": ["large", "regime.lr_rule=sqrt"],
    "LB+LR+GBN": ["large", "regime.lr_rule=sqrt", "ghost"],
    "LB+LR+GBN+RA": ["large", "regime.lr_rule=sqrt", "ghost", "regime.adapt=true"],
}


@dataclass(frozen=True)
class Gap:
    """One gap experiment: the data, the variants, the default batch sizes and epochs."""

    spec: DataSpec
    small: int
    factor: int
    epochs: int
    variants: dict[str, list[str]] = field(default_factory=lambda: dict(VARIANTS))
    doc: str = __doc__


def variant_overrides(variants: dict[str, list[str]], name: str, small: int, factor: int, epochs: int) -> list[str]:
    """Config overrides of one variant; the reference recipe is the small-batch one."""
    base = [
        f"data.batch_size={small}",
        f"train.epochs={epochs}",
        f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]",
        "train.log_every=50",
        "train.grad_clip_norm=5",
        "checkpoint.every_epochs=1",
        f"regime.reference_batch_size={small}",
        "diffusion.every_steps=1",
    ]
    for item in variants[name]:
        if item == "large":
            base.append(f"data.batch_size={small * factor}")
        elif item == "ghost":
            base.append(f"bn.ghost_batch_size={small}")
        else:
            base.append(item)
    return base


def run_all(gap: Gap, seeds: int, small: int, factor: int, epochs: int, work: Path, smoke: bool) -> dict:
    results: dict[str, list[dict]] = {name: [] for name in gap.variants}
    for seed in range(seeds):
        for name in gap.variants:
            overrides = [*variant_overrides(gap.variants, name, small, factor, epochs), f"seed={seed}"]
            if smoke:
                overrides += SMOKE_SUBSET
            summary = run(f"{name.replace('+', '_')}-seed{seed}", overrides, work, gap.spec)
            results[name].append(summary)
            print(
                f"{name:14s} seed {seed}: val acc {summary['val_acc']:.4f}, {summary['steps']} updates, "
                f"{summary['wall_seconds']:.0f}s",
                flush=True,
            )
    return results


def table(gap: Gap, results: dict[str, list[dict]], small: int, factor: int, epochs: int, seeds: int) -> str:
    lines = [
        f"{gap.spec.description}, batch {small} vs {small * factor}, {epochs} reference epochs, {seeds} seed(s); "
        "one process on a 2-core CPU. Updates: optimizer steps; wall: seconds per run.",
        "",
        "| variant | batch | lr | epochs | updates | val acc % (mean ± std) | wall s/run | diffusion slope a (R²) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        first = runs[0]
        fit = first.get("diffusion_fit") or {}
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        lines.append(
            f"| {name} | {first['batch_size']} | {first['lr']:.4g} | {first['epochs']} | {first['steps']} | "
            f"{mean_std([r['val_acc'] for r in runs])} | {wall:.0f} | "
            f"{fit.get('slope', float('nan')):.3f} ({fit.get('r2', float('nan')):.2f}) |"
        )
    return "\n".join(lines) + "\n"


def plot(gap: Gap, results: dict[str, list[dict]], path: Path) -> None:
    series = {name: tuple(zip(*runs[0]["diffusion_points"], strict=True)) for name, runs in results.items()}
    title = f"Weight distance from initialisation, {gap.spec.description.split(' (')[0]} (seed 0)"
    line_plot(series, path, ("updates t (log scale)", "||w_t - w_0||", title), log_x=True)


def main(gap: Gap) -> None:
    parser = experiment_parser(gap.doc)
    parser.add_argument("--small-batch", type=int, default=gap.small)
    parser.add_argument("--factor", type=int, default=gap.factor, help="large batch = factor × small batch")
    parser.add_argument("--epochs", type=int, default=gap.epochs, help="epochs of the small-batch reference recipe")
    args = parse(parser)
    if args.smoke:
        args.epochs = 1
    stem = f"gap_{gap.spec.key}"
    results = run_all(gap, args.seeds, args.small_batch, args.factor, args.epochs, args.runs / stem, args.smoke)
    save(gap, results, args.out, stem, table(gap, results, args.small_batch, args.factor, args.epochs, args.seeds))


def save(gap: Gap, results: dict[str, list[dict]], out: Path, stem: str, text: str) -> None:
    """The plot, then the table and the summaries without their per-step series, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot(gap, results, out / f"{stem}.png")
    for runs in results.values():
        for summary in runs:
            summary.pop("diffusion_points", None)
            summary.pop("curve", None)
    write_results(out, stem, text, results)


if __name__ == "__main__":
    main(Gap(MNIST_DATA, small=32, factor=32, epochs=5))
