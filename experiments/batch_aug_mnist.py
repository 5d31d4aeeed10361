"""Batch augmentation (Hoffer et al. 2020) on real MNIST digits: M views per sample, same number of updates.

    python experiments/batch_aug_mnist.py                     # ~8 min on 2 CPU cores
    python experiments/batch_aug_mnist.py --seeds 1 --epochs 2

MNIST F1 on the real MNIST test set split 8,000 / 2,000, batch 64 distinct
samples, pad-crop augmentation (2 pixels, no flips: digits are not symmetric),
the same lr schedule and number of optimizer steps for every M, copy-major
layout, DALI CPU pipelines (``--backend torch`` for the torch loader). Writes a
markdown table of validation accuracy against steps and a plot to ``--out``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import line_plot, mean_std, run
from common import parser as experiment_parser


def overrides(copies: int, epochs: int, backend: str, seed: int) -> list[str]:
    return [
        "data.batch_size=64",
        "data.crop=pad",
        "data.pad=2",
        "data.flip=false",
        f"data.backend={backend}",
        f"augment.copies={copies}",
        f"train.epochs={epochs}",
        f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]",
        "diffusion.every_steps=0",
        "checkpoint.every_epochs=0",
        "train.log_every=50",
        f"seed={seed}",
    ]


def table(results: dict[int, list[dict]], epochs: int, seeds: int, backend: str) -> str:
    steps = [step for step, _ in results[min(results)][0]["curve"]]
    header = " | ".join(f"step {s}" for s in steps)
    lines = [
        f"MNIST F1, real MNIST digits (8,000 train / 2,000 validation), batch 64 distinct samples × M views, "
        f"{epochs} epochs, {seeds} seed(s), {backend} loader, one process on a 2-core CPU. "
        "Validation accuracy % (mean ± std over seeds) after each epoch.",
        "",
        f"| M | images/step | {header} | wall s/run |",
        "| --- | ---: | " + " | ".join("---:" for _ in steps) + " | ---: |",
    ]
    for copies, runs in results.items():
        cells = [mean_std([r["curve"][i][1] for r in runs]) for i in range(len(steps))]
        wall = statistics.mean(r["train_seconds"] for r in runs)
        lines.append(f"| {copies} | {64 * copies} | " + " | ".join(cells) + f" | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[int, list[dict]], path: Path) -> None:
    series = {}
    for copies, runs in results.items():
        steps = [step for step, _ in runs[0]["curve"]]
        means = [100 * statistics.mean(r["curve"][i][1] for r in runs) for i in range(len(steps))]
        series[f"M = {copies}"] = (steps, means)
    labels = (
        "optimizer steps",
        "validation accuracy % (mean over seeds)",
        "Batch augmentation on MNIST F1: accuracy against updates",
    )
    line_plot(series, path, labels, marker="o")


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--backend", choices=["torch", "dali"], default="dali")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[int, list[dict]] = {copies: [] for copies in args.copies}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            for copies in args.copies:
                summary = run(f"M{copies}-seed{seed}", overrides(copies, args.epochs, args.backend, seed), Path(work))
                results[copies].append(summary)
                print(
                    f"M={copies} seed {seed}: val acc {summary['val_acc']:.4f} after {summary['steps']} steps, "
                    f"{summary['train_seconds']:.0f}s",
                    flush=True,
                )
    plot(results, args.out / "batch_aug_mnist.png")
    (args.out / "batch_aug_mnist.md").write_text(table(results, args.epochs, args.seeds, args.backend))
    (args.out / "batch_aug_mnist.json").write_text(json.dumps({str(m): runs for m, runs in results.items()}, indent=1))
    print((args.out / "batch_aug_mnist.md").read_text())


if __name__ == "__main__":
    main()
