"""The cost of ``dist.exact_reduction``: training time with DDP's buckets laid out once, from the model's
parameter order (exact resumes at any world size), against DDP's default layout (rebuilt after the first
backward from the order gradients became ready), side by side.

    python bench/exact_reduction.py                       # 4 processes (gloo on CPU, NCCL on GPUs)
    python bench/exact_reduction.py --models resnet20 --rounds 5 --nproc 8

Each round trains every model once with each setting, in alternating order (ABBA), as ``dist-train train``
under torchrun on synthetic 32×32 images; the time is the run's own ``train_seconds`` (epochs only, no start-up
or evaluation). Printed: the median seconds of each setting and their ratio (exact / default) per model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dist_train.local_launch import local_torchrun

REPO = Path(__file__).resolve().parent.parent


def train_seconds(model: str, exact: bool, args: argparse.Namespace, out: Path) -> float:
    """One run's training time, in seconds."""
    name = f"{model}-{'exact' if exact else 'default'}"
    overrides = [
        "data.dataset=synthetic",
        "data.num_workers=0",
        f"data.batch_size={args.batch}",
        f"data.synthetic_train_size={args.batch * args.steps}",
        "data.synthetic_val_size=256",
        f"model.name={model}",
        f"train.epochs={args.epochs}",
        "checkpoint.every_epochs=0",
        f"dist.exact_reduction={str(exact).lower()}",
        f"out_dir={out}",
        f"name={name}",
    ]
    command = [
        *local_torchrun(args.nproc),
        "-m",
        "dist_train",
        "train",
        "--config",
        "configs/quickstart.yaml",
        *overrides,
    ]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    summary = json.loads((out / name / "summary.json").read_text())
    shutil.rmtree(out / name)
    return summary["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["c1", "resnet20"])
    parser.add_argument("--nproc", type=int, default=4, help="processes (the layout matters from 3 on)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    args = parser.parse_args()
    if args.nproc < 3:
        sys.exit("bench/exact_reduction.py: error: --nproc must be at least 3 (with 1 or 2 ranks both are exact)")
    print(
        f"{args.nproc} processes, {args.rounds} rounds, {args.epochs} epochs × {args.steps} steps, "
        f"global batch {args.batch}; seconds of training (median)"
    )
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            times: dict[bool, list[float]] = {True: [], False: []}
            for round_index in range(args.rounds):
                order = (True, False) if round_index % 2 == 0 else (False, True)
                for exact in order:
                    times[exact].append(train_seconds(model, exact, args, Path(folder)))
            exact, default = statistics.median(times[True]), statistics.median(times[False])
            print(
                f"  {model:<10} exact {exact:7.2f} s   default {default:7.2f} s   ratio exact/default = "
                f"{exact / default:.3f}"
            )


if __name__ == "__main__":
    main()
