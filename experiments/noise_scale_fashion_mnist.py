"""The gradient noise scale on Fashion-MNIST (McCandlish et al. 2018): how it evolves, and whether it predicts.

    python experiments/noise_scale_fashion_mnist.py                 # (a) and (b): ~1.5 h on 2 idle CPU cores
    python experiments/noise_scale_fashion_mnist.py --part over-training
    python experiments/noise_scale_fashion_mnist.py --part steps-to-target
    python experiments/noise_scale_fashion_mnist.py --part steps-to-target --from-results  # re-analyse only
    python experiments/noise_scale_fashion_mnist.py --smoke         # a check that it runs (2,048 images)

(a) ``over-training``: B_simple measured live (``noise_scale.every_steps``) through the small-batch recipes
of F1 (``configs/fashion_mnist_f1_sb.yaml``: 60,000 images, 10 epochs) and C1
(``configs/fashion_mnist_c1_sb.yaml``: a 10,000-image subset, 10 epochs), ``--seeds`` seeds, one process:
the batch of 128 is four accumulated micro-batches of 32 (B_small = 32, B_big = 128; BatchNorm then
normalises over 32 images, as on four ranks). Plotted against the step and against the training loss.

(b) ``steps-to-target``: F1 at constant learning rate (momentum 0.9, no clipping) for batch sizes from
well below to well above the B_simple measured in (a) when the training loss crosses the target; for each
batch size a small grid of learning rates (the sweep ``configs/sweeps/fashion_mnist_noise_scale.yaml``,
run by ``dist-train sweep``), each run stopping at the epoch its training loss reaches the target
(``target.train_loss``). Steps to target: the first step at which the training loss, averaged over the
last ``WINDOW`` images, is at or below the target; the best learning rate of each batch size is kept.
S_min and E_min are fitted to S = S_min (1 + B_noise/B) with B_noise itself fitted, and compared with
the measured B_simple. Writes ``noise_scale_fashion_mnist.{md,json,png}`` to ``--out``; runs are kept
under ``--runs``, so the same command continues an interrupted experiment; ``--from-results`` redoes (b)'s
analysis from the steps saved in ``noise_scale_fashion_mnist.json`` without the runs.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from common import FASHION_DATA, REPO, SMOKE_SUBSET, DataSpec, parse, read_records, run, write_results
from common import parser as experiment_parser
from gap_fashion_mnist_c1 import C1_DATA

STEM = "noise_scale_fashion_mnist"
MODELS: dict[str, tuple[DataSpec, float]] = {"F1": (FASHION_DATA, 0.99), "C1": (C1_DATA, 0.98)}
"""Each model's data and the noise scale's EMA decay: measured at every update, averaged over about 100 (F1,
468 updates an epoch) or 50 (C1, 78 an epoch); one measurement alone is far too noisy once B_simple is
several times the batch of 128 it is measured with."""
ACCUM = 4
SWEEP = REPO / "configs" / "sweeps" / "fashion_mnist_noise_scale.yaml"
TARGET = 0.40
"""The training-loss target of (b) (the sweep's ``target.train_loss``)."""
SMOKE_TARGET = 1.5
"""``--smoke``'s target: its 2-epoch runs on 8,192 images get nowhere near ``TARGET``."""
WINDOW = 4096
"""Images over which (b) averages the logged step losses before comparing them with the target."""


def number(value: float | None) -> float:
    """A metrics.jsonl value (null where it was not a number) as a float."""
    return float("nan") if value is None else float(value)


def over_training(seeds: int, work: Path, smoke: bool) -> dict[str, list[dict[str, Any]]]:
    """Part (a): every model's small-batch recipe with the noise scale measured, for each seed."""
    results: dict[str, list[dict[str, Any]]] = {}
    for model, (spec, decay) in MODELS.items():
        for seed in range(seeds):
            overrides = [
                f"train.grad_accum_steps={ACCUM}",
                "noise_scale.every_steps=1",
                f"noise_scale.ema_decay={decay}",
                "diffusion.every_steps=0",
                "checkpoint.every_epochs=1",
                f"seed={seed}",
                *([*SMOKE_SUBSET, "train.epochs=2", "schedule.milestones=[1]"] if smoke else []),
            ]
            name = f"{model}-seed{seed}"
            summary = run(name, overrides, work, spec)
            records = read_records(work / name)
            summary["measured"] = [(r["step"], number(r["noise/b_simple"])) for r in records if "noise/grad_sq" in r]
            summary["epochs_seen"] = [
                (r["epoch"], r["train/loss"], number(r["noise/b_simple"]))
                for r in records
                if "train/loss" in r and "noise/b_simple" in r
            ]
            print(
                f"{model} seed {seed}: B_simple by epoch "
                + ", ".join(f"{b:.0f}" for _, _, b in summary["epochs_seen"])
                + f"; val acc {summary['val_acc']:.4f}",
                flush=True,
            )
            results.setdefault(model, []).append(summary)
    return results


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation of two equally long lists (no ties expected)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result

    return statistics.correlation(ranks(xs), ranks(ys)) if len(xs) > 2 else float("nan")


def over_training_table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "### (a) B_simple over training (small-batch recipe, B_small 32, B_big 128)",
        "",
        "| model | seed | B_simple epoch 1 | middle | last | train loss epoch 1 → last | rank corr(loss, B_simple) "
        "| val acc % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    unmeasured = 0
    for model, runs in results.items():
        grows = []
        for seed, summary in enumerate(runs):
            epochs = [e for e in summary["epochs_seen"] if math.isfinite(e[2])]  # nan: |G|² averaged ≤ 0
            unmeasured += len(summary["epochs_seen"]) - len(epochs)
            losses, values = [loss for _, loss, _ in epochs], [b for _, _, b in epochs]
            rho = spearman(losses, values)
            grows.append(values[-1] > values[0] and rho < 0)
            lines.append(
                f"| {model} | {seed} | {values[0]:.0f} | {values[len(values) // 2]:.0f} | {values[-1]:.0f} | "
                f"{losses[0]:.3f} → {losses[-1]:.3f} | {rho:.2f} | {100 * summary['val_acc']:.2f} |"
            )
        first = statistics.mean(finite(r)[0] for r in runs)
        last = statistics.mean(finite(r)[-1] for r in runs)
        verdicts.append(
            f"- {model}: B_simple grows as the training loss falls (last epoch above the first and a negative rank "
            f"correlation with the loss, every seed): {'**held**' if all(grows) else '**not held**'} "
            f"({sum(grows)}/{len(grows)} seeds; mean B_simple {first:.0f} at epoch 1 → {last:.0f} at the last, "
            f"{last / first:.1f}×)."
        )
    if unmeasured:
        verdicts.append(
            f"- {unmeasured} epoch end(s) had no value: the averaged |G|² was ≤ 0, the gradient lost in its noise at "
            "B_big = 128 after the lr drops (B_simple far above the batch it is measured with); left out above."
        )
    return "\n".join([*lines, "", *verdicts]) + "\n"


def finite(summary: dict[str, Any]) -> list[float]:
    """A run's epoch-end B_simple values that exist."""
    return [b for _, _, b in summary["epochs_seen"] if math.isfinite(b)]


def over_training_plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    figure, (by_step, by_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (model, runs), color in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
        for seed, summary in enumerate(runs):
            steps, values = zip(*summary["measured"], strict=True)
            label = model if seed == 0 else None
            by_step.plot(steps, values, color=color, alpha=0.5, linewidth=0.8, label=label)
            losses, epoch_values = [e[1] for e in summary["epochs_seen"]], [e[2] for e in summary["epochs_seen"]]
            by_loss.plot(losses, epoch_values, color=color, marker="o", alpha=0.7, label=label)
    by_step.set(xlabel="update", ylabel="B_simple (EMA)", yscale="log", title="B_simple over training")
    by_loss.set(xlabel="training loss (epoch mean)", ylabel="B_simple at the epoch's end", yscale="log")
    by_loss.set_title("B_simple against the loss")
    by_loss.invert_xaxis()
    for axis in (by_step, by_loss):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle("Gradient noise scale on Fashion-MNIST (3 seeds each, one process, B_small 32 / B_big 128)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def steps_to_target(run_dir: Path, batch: int, target: float) -> int | None:
    """The first step whose loss, averaged over the last ``WINDOW`` images' steps, is at or below ``target``."""
    losses = [r["train/step_loss"] for r in read_records(run_dir) if "train/step_loss" in r]
    window = math.ceil(WINDOW / batch)
    total = sum(losses[:window])
    for step in range(window, len(losses) + 1):
        if step > window:
            total += losses[step - 1] - losses[step - 1 - window]
        if total / window <= target:
            return step
    return None


def sweep_results(work: Path, smoke: bool, target: float) -> dict[int, list[dict[str, Any]]]:
    """Part (b)'s sweep (``dist-train sweep``, resumable), then every run's steps to the target by batch size."""
    extra = ["data.train_subset=8192", "train.epochs=2"] if smoke else []  # 8,192: one batch of 4,096 twice
    command = [sys.executable, "-m", "dist_train", "sweep", str(SWEEP), f"out_dir={work}", *extra]
    subprocess.run(command, check=True, cwd=REPO)
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for summary_path in sorted((work / SWEEP.stem).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        batch = summary["batch_size"]
        steps = steps_to_target(summary_path.parent, batch, target)
        row = {"lr": summary["lr"], "steps": steps, "epochs": summary["epochs"], "diverged": summary.get("diverged")}
        by_batch.setdefault(batch, []).append(row)
    return dict(sorted(by_batch.items()))


def fit(batches: list[int], steps: list[int], b_noise: float | None = None) -> tuple[float, float]:
    """S_min and B_noise of S = S_min (1 + B_noise / B), least squares on log S (B_noise given: S_min only)."""

    def s_min(noise: float) -> float:
        return math.exp(
            statistics.mean(math.log(s) - math.log1p(noise / b) for b, s in zip(batches, steps, strict=True))
        )

    def error(noise: float) -> float:
        return sum(
            (math.log(s) - math.log(s_min(noise) * (1 + noise / b))) ** 2 for b, s in zip(batches, steps, strict=True)
        )

    candidates = [b_noise] if b_noise else [2 ** (k / 16) for k in range(0, 16 * 17)]
    best = min(candidates, key=error)
    return s_min(best), best


def measured_b_simple(over: dict[str, list[dict[str, Any]]], target: float) -> float:
    """F1's B_simple from (a) where its training loss crosses ``target`` (log-interpolated between epochs, mean
    over seeds)."""
    values = []
    for summary in over["F1"]:
        epochs = summary["epochs_seen"]
        for (_, loss_a, b_a), (_, loss_b, b_b) in itertools.pairwise(epochs):
            if loss_a >= target >= loss_b:
                share = (loss_a - target) / (loss_a - loss_b)
                values.append(math.exp(math.log(b_a) + share * (math.log(b_b) - math.log(b_a))))
                break
        else:
            values.append(epochs[-1][2] if epochs[-1][1] > target else epochs[0][2])
    return statistics.mean(values)


def best_run(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The learning rate's run that reached the target in the fewest steps (None: none reached it)."""
    return min((r for r in rows if r["steps"]), key=lambda r: r["steps"], default=None)


def steps_table(
    by_batch: dict[int, list[dict[str, Any]]], b_simple: float, target: float
) -> tuple[str, dict[str, Any]]:
    best = {b: best_run(rows) for b, rows in by_batch.items()}
    reached = {b: r for b, r in best.items() if r}
    batches, steps = list(reached), [r["steps"] for r in reached.values()]
    if len(batches) < 2:
        raise SystemExit(f"only {len(batches)} batch size(s) reached the training loss {target}: nothing to fit")
    s_min, _ = fit(batches, steps, b_simple)
    free_s_min, free_noise = fit(batches, steps)
    edges = [
        b
        for b, r in reached.items()
        if r["lr"] in (min(x["lr"] for x in by_batch[b]), max(x["lr"] for x in by_batch[b]))
    ]
    inside = [b for b in batches if b not in edges]
    inside_fit = fit(inside, [reached[b]["steps"] for b in inside]) if edges and len(inside) > 1 else None
    lines = [
        f"### (b) Steps to a training loss of {target} (F1, constant lr, best of {len(next(iter(by_batch.values())))} "
        "learning rates per batch)",
        "",
        f"Measured B_simple where (a)'s F1 runs cross the target: **{b_simple:.0f}**. Predicted: S = S_min (1 + "
        f"B_simple / B) with S_min = {s_min:.0f} fitted; free fit of both: S_min = {free_s_min:.0f}, B_noise = "
        f"{free_noise:.0f}"
        + (
            f"; free fit without the grid-edge batches ({', '.join(map(str, edges))}): S_min = {inside_fit[0]:.0f}, "
            f"B_noise = {inside_fit[1]:.0f}."
            if inside_fit
            else "."
        ),
        "",
        "| batch | best lr | steps to target | predicted steps | measured / predicted | samples (×1000) | lrs that "
        "reached it |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ratios = {}
    for batch, rows in by_batch.items():
        row, predicted = best[batch], s_min * (1 + b_simple / batch)
        ok = ", ".join(f"{r['lr']:.3g}" + ("" if r["steps"] else " ✗") for r in rows)
        if row is None:
            lines.append(f"| {batch} | – | not reached | {predicted:.0f} | – | – | {ok} |")
            continue
        ratios[batch] = row["steps"] / predicted
        edge = " (grid edge)" if row["lr"] in (min(r["lr"] for r in rows), max(r["lr"] for r in rows)) else ""
        lines.append(
            f"| {batch} | {row['lr']:.3g}{edge} | {row['steps']} | {predicted:.0f} | {ratios[batch]:.2f} | "
            f"{batch * row['steps'] / 1000:.0f} | {ok} |"
        )
    worst = max(ratios.values(), key=lambda r: abs(math.log(r)))
    first, second = batches[0], batches[1] if len(batches) > 1 else batches[0]
    last, before = batches[-1], batches[-2] if len(batches) > 1 else batches[-1]
    below = reached[first]["steps"] / reached[second]["steps"]
    above = reached[before]["steps"] / reached[last]["steps"]

    def verdict(held: bool) -> str:
        return "**held**" if held else "**not held**"

    lines += [
        "",
        f"- The best learning rate lies inside the grid at every batch: {verdict(not edges)}"
        + (f" (at its edge for batch {', '.join(map(str, edges))}: their steps are an upper bound)." if edges else "."),
        f"- Well below B_simple, doubling the batch almost halves the steps: {verdict(below >= 1.5)} "
        f"(B {first} → {second}: {below:.2f}× fewer steps).",
        f"- Well above B_simple, doubling the batch saves few steps: {verdict(above <= 1.3)} "
        f"(B {before} → {last}: {above:.2f}× fewer).",
        f"- The measured noise scale predicts the steps at every batch within a factor 1.5 (S_min fitted, "
        f"B_noise = the measured {b_simple:.0f}): {verdict(abs(math.log(worst)) <= math.log(1.5))} "
        f"(worst measured/predicted {worst:.2f}).",
        f"- The measured B_simple is within a factor 2 of the B_noise fitted to the steps: "
        f"{verdict(0.5 <= free_noise / b_simple <= 2)} (fitted {free_noise:.0f}, measured {b_simple:.0f}: "
        f"{free_noise / b_simple:.2f}×)"
        + (
            f"; without the grid-edge batches: {verdict(0.5 <= inside_fit[1] / b_simple <= 2)} "
            f"({inside_fit[1]:.0f}: {inside_fit[1] / b_simple:.2f}×)."
            if inside_fit
            else "."
        ),
    ]
    raw = {"by_batch": by_batch, "b_simple": b_simple, "s_min": s_min, "free_fit": [free_s_min, free_noise]}
    raw["inside_grid_fit"] = list(inside_fit) if inside_fit else None
    raw["target"] = target
    return "\n".join(lines) + "\n", raw


def steps_plot(raw: dict[str, Any], path: Path) -> None:
    figure, (steps_axis, samples_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_batch, b_simple, s_min = raw["by_batch"], raw["b_simple"], raw["s_min"]
    free_s_min, free_noise = raw["free_fit"]
    batches = sorted(by_batch)
    for batch in batches:
        for row in by_batch[batch]:
            if row["steps"]:
                steps_axis.scatter(batch, row["steps"], color="grey", alpha=0.35, s=12)
    best = {b: row["steps"] for b in batches if (row := best_run(by_batch[b]))}
    grid = [2 ** (k / 8) for k in range(8 * 4, 8 * 13)]
    steps_axis.plot(list(best), list(best.values()), "o", color="black", label="measured (best lr)")
    steps_axis.plot(
        grid, [s_min * (1 + b_simple / b) for b in grid], label=f"S_min(1 + B_simple/B), B_simple {b_simple:.0f}"
    )
    steps_axis.plot(
        grid, [free_s_min * (1 + free_noise / b) for b in grid], "--", label=f"free fit, B_noise {free_noise:.0f}"
    )
    samples_axis.plot(list(best), [b * s for b, s in best.items()], "o", color="black", label="measured (best lr)")
    samples_axis.plot(grid, [s_min * b_simple * (1 + b / b_simple) for b in grid], label="E_min(1 + B/B_simple)")
    for axis, label in ((steps_axis, "steps to target"), (samples_axis, "samples to target")):
        axis.axvline(b_simple, color="tab:red", alpha=0.4, linestyle=":")
        axis.set(xscale="log", yscale="log", xlabel="batch size", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    steps_axis.set_title(f"Steps to training loss {raw['target']} (F1, Fashion-MNIST)")
    samples_axis.set_title("Samples to the same target")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def saved_steps(saved: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """(b)'s steps by batch size as the results JSON holds them (its keys are strings)."""
    return {int(batch): rows for batch, rows in saved["by_batch"].items()}


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--part", choices=("all", "over-training", "steps-to-target"), default="all")
    parser.add_argument(
        "--from-results", action="store_true", help="(b): analyse the steps saved in the results, run nothing"
    )
    args = parse(parser)
    args.out.mkdir(parents=True, exist_ok=True)
    saved_path = args.out / f"{STEM}.json"
    saved: dict[str, Any] = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    raw: dict[str, Any] = dict(saved)
    script = f"python experiments/{Path(__file__).name}"
    text = [
        f"Fashion-MNIST (real data), one process on a 2-core CPU. Commands: `{script} --part over-training` (a), "
        f"`{script} --part steps-to-target` (b).",
        "",
    ]
    if args.part in ("all", "over-training"):
        results = over_training(args.seeds, args.runs / STEM / "over_training", args.smoke)
        over_training_plot(results, args.out / f"{STEM}.png")
        raw["over_training"] = {
            m: [{k: r[k] for k in ("epochs_seen", "val_acc")} for r in rs] for m, rs in results.items()
        }
    if "over_training" in raw:  # (a)'s table stays in the results when only (b) is run
        text.append(over_training_table(raw["over_training"]))
    if args.part in ("all", "steps-to-target"):
        if "over_training" not in raw:
            raise SystemExit(f"(b) needs (a)'s B_simple: run --part over-training first ({saved_path} has none)")
        target = SMOKE_TARGET if args.smoke else TARGET
        if args.from_results:
            if "steps_to_target" not in saved:
                raise SystemExit(f"--from-results: {saved_path} holds no steps-to-target results")
            by_batch = saved_steps(saved["steps_to_target"])
        else:
            by_batch = sweep_results(args.runs / STEM, args.smoke, target)
        table, raw["steps_to_target"] = steps_table(by_batch, measured_b_simple(raw["over_training"], target), target)
        steps_plot(raw["steps_to_target"], args.out / f"{STEM}_steps.png")
        text.append(table)
    elif "steps_to_target" in saved:  # and (b)'s when only (a) is run
        old = saved["steps_to_target"]
        text.append(steps_table(saved_steps(old), old["b_simple"], old["target"])[0])
    write_results(args.out, STEM, "\n".join(text), raw)


if __name__ == "__main__":
    main()
