"""The large-batch generalization gap on real MNIST digits, and the fixes of Hoffer et al. (2017).

    python experiments/gap_mnist.py                       # ~15 min on 2 CPU cores
    python experiments/gap_mnist.py --seeds 1 --epochs 2  # a quick look

MNIST "F1" on the real MNIST test set split 8,000 / 2,000 (fixed split seed),
trained in one process with a small batch B and with 32·B in five variants:
SB, LB, LB+LR (sqrt lr scaling), LB+LR+GBN (ghost batches of B), LB+LR+GBN+RA
(regime adaptation: as many updates as SB). Writes a markdown table (mean ± std
validation accuracy over seeds, updates, wall time, diffusion slope) and a plot
of ||w_t - w_0|| against log t to ``--out``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import line_plot, mean_std, run
from common import parser as experiment_parser

VARIANTS = {
    "SB": [],
    "LB": ["large"],
    "LB+LR": ["large", "regime.lr_rule=sqrt"],
    "LB+LR+GBN": ["large", "regime.lr_rule=sqrt", "ghost"],
    "LB+LR+GBN+RA": ["large", "regime.lr_rule=sqrt", "ghost", "regime.adapt=true"],
}


def variant_overrides(name: str, small: int, factor: int, epochs: int) -> list[str]:
    """Config overrides of one variant; the reference recipe is the small-batch one."""
    base = [
        f"data.batch_size={small}",
        f"train.epochs={epochs}",
        f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]",
        "train.log_every=50",
        "train.grad_clip_norm=5",
        "checkpoint.every_epochs=0",
        f"regime.reference_batch_size={small}",
        "diffusion.every_steps=1",
    ]
    for item in VARIANTS[name]:
        if item == "large":
            base.append(f"data.batch_size={small * factor}")
        elif item == "ghost":
            base.append(f"bn.ghost_batch_size={small}")
        else:
            base.append(item)
    return base


def run_all(seeds: int, small: int, factor: int, epochs: int, work: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in range(seeds):
        for name in VARIANTS:
            overrides = [*variant_overrides(name, small, factor, epochs), f"seed={seed}"]
            summary = run(f"{name.replace('+', '_')}-seed{seed}", overrides, work)
            results[name].append(summary)
            print(
                f"{name:14s} seed {seed}: val acc {summary['val_acc']:.4f}, {summary['steps']} updates, "
                f"{summary['train_seconds']:.0f}s",
                flush=True,
            )
    return results


def table(results: dict[str, list[dict]], small: int, factor: int, epochs: int, seeds: int) -> str:
    lines = [
        f"MNIST F1 on real MNIST digits (8,000 train / 2,000 validation), batch {small} vs {small * factor}, "
        f"{epochs} reference epochs, {seeds} seed(s); one process on a 2-core CPU.",
        "",
        "| variant | batch | lr | epochs | updates | val acc % (mean ± std) | wall s/run | diffusion slope a (R²) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        first = runs[0]
        fit = first.get("diffusion_fit") or {}
        wall = statistics.mean(r["train_seconds"] for r in runs)
        lines.append(
            f"| {name} | {first['batch_size']} | {first['lr']:.4g} | {first['epochs']} | {first['steps']} | "
            f"{mean_std([r['val_acc'] for r in runs])} | {wall:.0f} | "
            f"{fit.get('slope', float('nan')):.3f} ({fit.get('r2', float('nan')):.2f}) |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    series = {name: tuple(zip(*runs[0]["diffusion_points"], strict=True)) for name, runs in results.items()}
    labels = ("updates t (log scale)", "||w_t - w_0||", "Weight distance from initialisation, MNIST F1 (seed 0)")
    line_plot(series, path, labels, log_x=True)


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--small-batch", type=int, default=32)
    parser.add_argument("--factor", type=int, default=32, help="large batch = factor × small batch")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the small-batch reference recipe")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        results = run_all(args.seeds, args.small_batch, args.factor, args.epochs, Path(work))
    plot(results, args.out / "gap_mnist.png")
    (args.out / "gap_mnist.md").write_text(table(results, args.small_batch, args.factor, args.epochs, args.seeds))
    for runs in results.values():
        for summary in runs:
            summary.pop("diffusion_points", None)
            summary.pop("curve", None)
    (args.out / "gap_mnist.json").write_text(json.dumps(results, indent=1))
    print((args.out / "gap_mnist.md").read_text())


if __name__ == "__main__":
    main()
