"""Batch augmentation (Hoffer et al. 2020) on real MNIST digits: M views per sample, same number of updates.

    python experiments/batch_aug_mnist.py                     # ~8 min on 2 CPU cores
    python experiments/batch_aug_mnist.py --seeds 1 --epochs 2
    python experiments/batch_aug_mnist.py --smoke             # a check that it runs (2,048 images)

MNIST F1 on the real MNIST test set split 8,000 / 2,000, batch 64 distinct
samples, pad-crop augmentation (2 pixels, no flips: digits are not symmetric),
the same lr schedule and number of optimizer steps for every M, copy-major
layout, DALI CPU pipelines (``--backend torch`` for the torch loader). Writes a
markdown table of validation accuracy against steps, the updates each M needs to
reach the final accuracy of M = 1, and a plot to ``--out``. Runs are kept under
``--runs``: the same command continues an interrupted experiment.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from common import MNIST_DATA, SMOKE_SUBSET, DataSpec, line_plot, mean_std, parse, run, write_results
from common import parser as experiment_parser


@dataclass(frozen=True)
class BatchAug:
    """One batch-augmentation experiment: the data, its augmentation and the defaults."""

    spec: DataSpec
    batch: int
    copies: tuple[int, ...]
    epochs: int
    augmentation: tuple[str, ...]
    """Overrides choosing the random augmentation the M views differ by."""
    doc: str = __doc__


MNIST = BatchAug(MNIST_DATA, 64, (1, 2, 4), 6, ("data.crop=pad", "data.pad=2", "data.flip=false"))


def overrides(experiment: BatchAug, copies: int, epochs: int, backend: str, seed: int) -> list[str]:
    return [
        f"data.batch_size={experiment.batch}",
        *experiment.augmentation,
        f"data.backend={backend}",
        f"augment.copies={copies}",
        f"train.epochs={epochs}",
        f"schedule.milestones=[{0.6 * epochs:g},{0.8 * epochs:g}]",
        "diffusion.every_steps=0",
        "checkpoint.every_epochs=1",
        "train.log_every=50",
        f"seed={seed}",
    ]


def mean_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    """Steps and validation accuracy (mean over seeds) at each evaluation."""
    steps = [step for step, _ in runs[0]["curve"]]
    return steps, [statistics.mean(r["curve"][i][1] for r in runs) for i in range(len(steps))]


def updates_to_reach(steps: list[int], accuracy: list[float], target: float) -> float | None:
    """The first update count at which the curve reaches ``target``, interpolated linearly between
    evaluations (from 0 updates at accuracy 0); None if it never does."""
    previous_step, previous = 0, 0.0
    for step, value in zip(steps, accuracy, strict=True):
        if value >= target:
            return previous_step + (step - previous_step) * (target - previous) / max(value - previous, 1e-12)
        previous_step, previous = step, value
    return None


def table(experiment: BatchAug, results: dict[int, list[dict]], epochs: int, seeds: int, backend: str) -> str:
    baseline = min(results)
    steps, base_curve = mean_curve(results[baseline])
    target = base_curve[-1]
    header = " | ".join(f"step {s}" for s in steps)
    lines = [
        f"{experiment.spec.description}, batch {experiment.batch} distinct samples × M views, "
        f"{epochs} epochs, {seeds} seed(s), {backend} loader, one process on a 2-core CPU. "
        f"Validation accuracy % (mean ± std over seeds) after each epoch; the last column is the number of "
        f"updates each M needs to reach M = {baseline}'s final mean accuracy ({100 * target:.2f} %), "
        "interpolated between evaluations.",
        "",
        f"| M | images/step | {header} | wall s/run | updates to {100 * target:.2f} % |",
        "| --- | ---: | " + " | ".join("---:" for _ in steps) + " | ---: | ---: |",
    ]
    for copies, runs in results.items():
        cells = [mean_std([r["curve"][i][1] for r in runs]) for i in range(len(steps))]
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        reach = updates_to_reach(*mean_curve(runs), target)
        reached = f"{reach:.0f}" if reach is not None else "not reached"
        lines.append(
            f"| {copies} | {experiment.batch * copies} | " + " | ".join(cells) + f" | {wall:.0f} | {reached} |"
        )
    return "\n".join(lines) + "\n"


def plot(experiment: BatchAug, results: dict[int, list[dict]], path) -> None:
    series = {f"M = {copies}": mean_curve(runs) for copies, runs in results.items()}
    series = {name: (steps, [100 * a for a in accuracy]) for name, (steps, accuracy) in series.items()}
    name = experiment.spec.description.split(" (")[0]
    labels = (
        "optimizer steps",
        "validation accuracy % (mean over seeds)",
        f"Batch augmentation, {name}: accuracy against updates",
    )
    line_plot(series, path, labels, marker="o")


def main(experiment: BatchAug) -> None:
    parser = experiment_parser(experiment.doc)
    parser.add_argument("--copies", type=int, nargs="+", default=list(experiment.copies))
    parser.add_argument("--epochs", type=int, default=experiment.epochs)
    parser.add_argument("--backend", choices=["torch", "dali", "tensor"], default="dali")
    args = parse(parser)
    if args.smoke:
        args.epochs = 2
    stem = f"batch_aug_{experiment.spec.key}"
    work = args.runs / stem
    results: dict[int, list[dict]] = {copies: [] for copies in args.copies}
    smoke = SMOKE_SUBSET if args.smoke else []
    for seed in range(args.seeds):
        for copies in args.copies:
            extra = [*overrides(experiment, copies, args.epochs, args.backend, seed), *smoke]
            summary = run(f"M{copies}-seed{seed}", extra, work, experiment.spec)
            results[copies].append(summary)
            print(
                f"M={copies} seed {seed}: val acc {summary['val_acc']:.4f} after {summary['steps']} steps, "
                f"{summary['wall_seconds']:.0f}s",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(experiment, results, args.out / f"{stem}.png")
    text = table(experiment, results, args.epochs, args.seeds, args.backend)
    write_results(args.out, stem, text, {str(m): runs for m, runs in results.items()})


if __name__ == "__main__":
    main(MNIST)
