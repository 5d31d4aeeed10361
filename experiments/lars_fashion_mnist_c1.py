"""LARS and LAMB at the large batch of the C1 gap (Fashion-MNIST, batch 2,048 = 16× the SB recipe's 128).

    python experiments/lars_fashion_mnist_c1.py            # ~25 min on 2 idle CPU cores (13 runs)
    python experiments/lars_fashion_mnist_c1.py --smoke    # a check that it runs (2,048 images, 1 epoch)

Does a layer-wise adaptive optimizer close the large-batch gap at equal epochs, without regime adaptation,
and does it combine with Ghost BN? The recipe is ``configs/fashion_mnist_c1_sb.yaml`` at batch 2,048 (40
updates in 10 epochs), as the LB rows of ``gap_fashion_mnist_c1.py``, with LARS or LAMB instead of SGD, a
2-epoch linear warm-up then polynomial decay (power 2), norms and biases out of the trust ratio and the weight
decay (``optim.decay_bn_and_bias: false``). The learning rate of each optimizer is picked by a small sweep
on seed 0 (the best validation accuracy; the validation set is the test set, so the pick is slightly
optimistic), then run for ``--seeds`` seeds: LB+LARS, LB+LARS+GBN (ghost batches of 128) and LB+LAMB. The
rows of the gap table (SB, LB, +LR, +GBN, +RA) are read from ``gap_fashion_mnist_c1.json`` for comparison.
Writes ``lars_fashion_mnist_c1.{md,json}`` to ``--out``; runs are kept under ``--runs`` (resumable).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from common import SMOKE_SUBSET, mean_std, parse, read_records, run, write_results
from common import parser as experiment_parser
from gap_fashion_mnist_c1 import C1_DATA, GAP
from gap_mnist import variant_overrides

STEM = "lars_fashion_mnist_c1"
ADAPTIVE = ["large", "optim.decay_bn_and_bias=false", "schedule.name=poly", "schedule.warmup_epochs=2"]
SWEEPS = {"lars": (2.0, 8.0, 32.0), "lamb": (0.005, 0.02, 0.08, 0.32)}
"""The learning rates tried on seed 0 (LARS's trust coefficient 0.001 makes its lr large)."""
GAP_ROWS = ("SB", "LB", "LB+LR", "LB+LR+GBN", "LB+LR+GBN+RA")


def variant(optimizer: str, lr: float, ghost: bool) -> list[str]:
    items = [*ADAPTIVE, f"optim.name={optimizer}", f"optim.lr={lr:g}", *(["ghost"] if ghost else [])]
    return variant_overrides({"v": items}, "v", GAP.small, GAP.factor, GAP.epochs)


def train(name: str, overrides: list[str], seed: int, work: Path, smoke: bool) -> dict:
    run_name = f"{name}-seed{seed}"
    summary = run(run_name, [*overrides, f"seed={seed}", *(SMOKE_SUBSET if smoke else [])], work, C1_DATA)
    summary["train_acc"] = [r["train/acc"] for r in read_records(work / run_name) if "train/acc" in r][-1]
    print(f"{run_name:32s} val acc {summary['val_acc']:.4f}, {summary['wall_seconds']:.0f}s", flush=True)
    return summary


def run_all(seeds: int, work: Path, smoke: bool) -> tuple[dict[str, list[dict]], dict[str, dict[float, float]]]:
    swept: dict[str, dict[float, float]] = {}
    best: dict[str, float] = {}
    for optimizer, grid in SWEEPS.items():
        runs = {lr: train(f"LB_{optimizer}_lr{lr:g}", variant(optimizer, lr, False), 0, work, smoke) for lr in grid}
        swept[optimizer] = {lr: summary["val_acc"] for lr, summary in runs.items()}
        best[optimizer] = max(grid, key=lambda lr: swept[optimizer][lr])
    rows = {"LB+LARS": ("lars", False), "LB+LARS+GBN": ("lars", True), "LB+LAMB": ("lamb", False)}
    results: dict[str, list[dict]] = {}
    for row, (optimizer, ghost) in rows.items():
        lr = best[optimizer]
        name = f"LB_{optimizer}_lr{lr:g}" + ("_gbn" if ghost else "")
        results[row] = [train(name, variant(optimizer, lr, ghost), seed, work, smoke) for seed in range(seeds)]
    return results, swept


def table(results: dict[str, list[dict]], swept: dict[str, dict[float, float]], gap: dict) -> str:
    acc = {name: 100 * statistics.mean(r["val_acc"] for r in runs) for name, runs in results.items()}
    gap_acc = {name: 100 * statistics.mean(r["val_acc"] for r in runs) for name, runs in gap.items() if runs}
    lines = [
        f"{C1_DATA.description}; batch 2048 (16× the SB recipe's 128), 10 epochs = 40 updates, one process.",
        "",
        "| variant | seeds | optimizer | lr | updates | val acc % (mean ± std) | train acc % |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    rows = [(f"{name} (gap table)", gap[name], "sgd") for name in GAP_ROWS if gap.get(name)]
    rows += [(name, runs, "lamb" if "LAMB" in name else "lars") for name, runs in results.items()]
    for name, runs, optimizer in rows:
        train_acc = 100 * statistics.mean(r["train_acc"] for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {optimizer} | {runs[0]['lr']:.4g} | {runs[0]['steps']} | "
            f"{mean_std([r['val_acc'] for r in runs])} | {train_acc:.2f} |"
        )
    for optimizer, found in swept.items():
        tried = ", ".join(f"{lr:g}: {100 * a:.2f} %" for lr, a in found.items())
        lines.append(f"\n{optimizer} lr sweep (seed 0, val acc): {tried}.")

    def verdict(held: bool) -> str:
        return "**held**" if held else "**not held**"

    sb, lb, lr_gbn = gap_acc.get("SB"), gap_acc.get("LB"), gap_acc.get("LB+LR+GBN")
    if sb is not None and lb is not None:
        lines += [
            "",
            "Claims (means over seeds):",
            "",
            f"- LARS closes the gap at equal epochs (within 1 point of SB, no regime adaptation): "
            f"{verdict(acc['LB+LARS'] >= sb - 1)} (LB+LARS {acc['LB+LARS']:.2f}, SB {sb:.2f}, LB {lb:.2f}).",
            f"- LARS beats SGD's best 40-update row (LB+LR+GBN {lr_gbn:.2f}): {verdict(acc['LB+LARS'] > lr_gbn)}.",
            f"- LARS combines with Ghost BN (LB+LARS+GBN at least LB+LARS): "
            f"{verdict(acc['LB+LARS+GBN'] >= acc['LB+LARS'])} ({acc['LB+LARS+GBN']:.2f} against "
            f"{acc['LB+LARS']:.2f}).",
            f"- LAMB closes the gap at equal epochs: {verdict(acc['LB+LAMB'] >= sb - 1)} (LB+LAMB "
            f"{acc['LB+LAMB']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse(experiment_parser(__doc__))
    work = args.runs / STEM
    results, swept = run_all(args.seeds, work, args.smoke)
    gap_path = args.out / "gap_fashion_mnist_c1.json"
    gap = json.loads(gap_path.read_text()) if gap_path.is_file() and not args.smoke else {}
    text = table(results, swept, gap)
    write_results(args.out, STEM, text, {"results": results, "sweeps": swept})


if __name__ == "__main__":
    main()
