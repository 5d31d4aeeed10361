"""Why the sqrt-scaled learning rate hurts large batches at few updates, on Fashion-MNIST (one seed each).

    python experiments/lb_recipe_fashion_mnist.py              # ~15 min on 2 idle CPU cores
    python experiments/lb_recipe_fashion_mnist.py --smoke      # a 2,048-image check that it runs

MNIST F1 on Fashion-MNIST (60,000 / 10,000), the configs/fashion_mnist_f1_* recipes at batch
``--batch`` (4,096 by default: 14 updates per epoch) for 10 epochs, one process. Each variant
changes one thing against LB+LR (lr 0.1 × sqrt(B / 128)): the gradual warm-up
(``regime.warmup_epochs``), no gradient clipping; LB (the unscaled lr) and SB (batch 128) are the
bounds. Besides the final accuracy the table shows what happens in the first epoch (validation
accuracy after it, the largest training loss of its steps, how many of its steps the norm-5 clipping
cut) and the accuracy once the BatchNorm statistics are recomputed over the training set (stale
running statistics would show up there). Writes ``lb_recipe_fashion_mnist.{md,json}`` to ``--out``.
"""

from __future__ import annotations

import statistics
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import FASHION_DATA, REPO, SMOKE_SUBSET, DataSpec, parse, read_records, run, write_results
from common import parser as experiment_parser
from torch.utils.data import DataLoader

from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.data.loader import build_eval_loader
from dist_train.evaluate import evaluate
from dist_train.models import build_model
from dist_train.regime import plan_from_config
from dist_train.swap import recompute_bn

CONFIGS = {
    "SB": "fashion_mnist_f1_sb.yaml",
    "LB": "fashion_mnist_f1_lb.yaml",
    "LB+LR": "fashion_mnist_f1_lb_lr.yaml",
    "LB+LR, no clipping": "fashion_mnist_f1_lb_lr.yaml",
    "LB+LR+warm-up": "fashion_mnist_f1_lb_lr.yaml",
    "LB+LR+GBN": "fashion_mnist_f1_lb_lr_gbn.yaml",
    "LB+LR+GBN+warm-up": "fashion_mnist_f1_lb_lr_gbn.yaml",
}
CHANGES = {
    "LB+LR, no clipping": ["train.grad_clip_norm=0"],
    "LB+LR+warm-up": ["regime.warmup_epochs=2"],
    "LB+LR+GBN+warm-up": ["regime.warmup_epochs=2"],
}
CLIP = 5.0


def overrides(name: str, batch: int, smoke: bool) -> list[str]:
    common = ["train.log_every=1", "checkpoint.every_epochs=0", "diffusion.every_steps=0", "seed=0"]
    if name != "SB":
        common.append(f"data.batch_size={batch}")
    if smoke:
        common += [*SMOKE_SUBSET, "train.epochs=2", "schedule.milestones=[1]"]
    return [*common, *CHANGES.get(name, [])]


def bn_recomputed_accuracy(run_dir: Path, config: Path, extra: list[str]) -> tuple[float, int]:
    """Validation accuracy of the run's final weights once the BN statistics are recomputed over the
    training set, and the run's planned warm-up steps."""
    cfg = load_config(config, extra)
    data = build_datasets(replace(cfg.data, augment=False))
    model = build_model(cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
    recompute_bn(model, DataLoader(data.train, batch_size=1024), torch.device("cpu"))
    val_loader = build_eval_loader(data.val, 1024, 0, 1, 0, False)
    _, accuracy = evaluate(model, val_loader, lambda images, labels: (images, labels), nullcontext)
    return accuracy, plan_from_config(cfg, len(data.train)).warmup_total_steps


def first_epoch(run_dir: Path, steps: int) -> dict[str, float]:
    records = read_records(run_dir)
    early = [r for r in records if "train/step_loss" in r and r["step"] <= steps]
    val = [r["val/acc"] for r in records if "val/acc" in r]
    return {
        "val_acc_epoch1": val[0],
        "max_step_loss_epoch1": max(r["train/step_loss"] for r in early),
        "clipped_steps_epoch1": sum(r.get("train/grad_norm", 0.0) > CLIP for r in early),
        "max_grad_norm_epoch1": max(r.get("train/grad_norm", 0.0) for r in early),
    }


def table(results: dict[str, dict[str, Any]], batch: int, smoke: bool) -> str:
    what = "a 2,048-image subset, 2 epochs (smoke test)" if smoke else "60,000 / 10,000, 10 epochs"
    lines = [
        f"MNIST F1 on Fashion-MNIST ({what}), batch {batch} against SB 128, seed 0, one process on a "
        "2-core CPU (shared). Epoch 1 columns: validation accuracy after it, the largest training loss "
        "of its steps, and its steps whose gradient norm exceeded 5 (clipped, except in the no-clipping "
        "row). BN recomputed: the final weights with BatchNorm statistics recomputed over the training set.",
        "",
        "| variant | lr | warm-up steps | updates | val acc % | epoch 1: val acc % | epoch 1: max step loss "
        "| epoch 1: steps with grad norm > 5 | val acc %, BN recomputed | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['lr']:.4g} | {r['warmup_steps']} | {r['steps']} | {100 * r['val_acc']:.2f} | "
            f"{100 * r['val_acc_epoch1']:.2f} | {r['max_step_loss_epoch1']:.2f} | {r['clipped_steps_epoch1']} | "
            f"{100 * r['val_acc_bn_recomputed']:.2f} | {r['wall_seconds']:.0f} |"
        )
    lines += ["", "Commands (each row is one `dist-train train`):", "", "```"]
    for name in results:
        extra = " ".join(o for o in overrides(name, batch, smoke) if not o.startswith("seed"))
        lines.append(f"dist-train train --config configs/{CONFIGS[name]} {extra}")
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = experiment_parser(__doc__, seeds=1)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--variants", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parse(parser)
    work = args.runs / "lb_recipe_fashion_mnist"
    results: dict[str, dict[str, Any]] = {}
    for name in args.variants:
        config = REPO / "configs" / CONFIGS[name]
        extra = overrides(name, args.batch, args.smoke)
        label = name.replace("+", "_").replace(", ", "_").replace(" ", "_").replace("-", "")
        summary = run(label, extra, work, DataSpec(FASHION_DATA.key, config, (), FASHION_DATA.description))
        summary |= first_epoch(work / label, summary["steps"] // summary["epochs"])
        summary["val_acc_bn_recomputed"], summary["warmup_steps"] = bn_recomputed_accuracy(work / label, config, extra)
        summary.pop("curve", None)
        summary.pop("diffusion_points", None)
        results[name] = summary
        print(
            f"{name}: val acc {summary['val_acc']:.4f} (BN recomputed {summary['val_acc_bn_recomputed']:.4f}), "
            f"{summary['steps']} updates, {summary['wall_seconds']:.0f}s",
            flush=True,
        )
    write_results(args.out, "lb_recipe_fashion_mnist", table(results, args.batch, args.smoke), results)
    print(f"mean wall s/run: {statistics.mean(r['wall_seconds'] for r in results.values()):.0f}")


if __name__ == "__main__":
    main()
