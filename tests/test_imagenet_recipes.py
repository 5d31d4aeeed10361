"""The large-batch ImageNet recipes: each prints its plan without data, and trains a few steps on a generated
JPEG ImageFolder tree with the DALI backend at a tiny size (the recipe's own optimizer, schedule, BN and
label smoothing; only sizes are overridden)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_ok, run_cli
from PIL import Image

RECIPES = {
    "imagenet_resnet50_goyal_8k": "optimizer: sgd (momentum 0.9, weight decay 0.0001); schedule: step",
    "imagenet_resnet50_lars_32k": "optimizer: lars (momentum 0.9, trust coefficient 0.001, weight decay 0.0001, "
    "norms and biases exempt); schedule: poly (power 2) to 0 × lr, label smoothing 0.1",
    "imagenet_resnet50_lamb_32k": "optimizer: lamb (betas 0.9, 0.999, eps 1e-06, weight decay 0.01, norms and "
    "biases exempt); schedule: poly (power 2) to 0 × lr, label smoothing 0.1",
    "imagenet_resnet50_train_longer_8k": "optimizer: sgd (momentum 0.9, weight decay 0.0001); schedule: step",
}
"""Each recipe and the optimizer line its plan prints."""

TOTAL_UPDATES = {
    "imagenet_resnet50_goyal_8k": "14040",
    "imagenet_resnet50_lars_32k": "2730",
    "imagenet_resnet50_lamb_32k": "2730",
    "imagenet_resnet50_train_longer_8k": "450360   (×1.00)",
}
"""The updates each plans over ImageNet's 1,281,167 training images."""


PLAN = "dist-train plan --config configs/imagenet_resnet50_lars_32k.yaml --train-size 1281167"
"""The plan shown in docs/papers/large-batch-optimizers.md, run as written by test_plan_without_data."""


@pytest.mark.parametrize("name", RECIPES)
def test_plan_without_data(name: str) -> None:
    words = PLAN.replace("imagenet_resnet50_lars_32k", name).split()
    result = run_cli(words[1:])
    assert_ok(result)
    assert RECIPES[name] in result.stdout and TOTAL_UPDATES[name] in result.stdout, result.stdout


def jpeg_tree(root: Path, classes: int = 4, per_class: int = 12, side: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side + 8 * (i % 3), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=85)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_smoke_on_generated_jpegs_with_dali(name: str, tmp_path: Path, dali: None) -> None:
    root = jpeg_tree(tmp_path / "imagenet")
    tiny = [
        f"data.root={root}",
        "data.batch_size=8",
        "data.image_size=32",
        "data.num_workers=0",
        "data.val_fraction=0.25",
        "train.epochs=1",
        "train.precision=fp32",
        "train.channels_last=true",
        "train.eval_every=1",
        f"out_dir={tmp_path / 'runs'}",
        "name=smoke",
    ]
    if "ghost_batch_size" in (REPO / "configs" / f"{name}.yaml").read_text():
        tiny.append("bn.ghost_batch_size=4")
    if "reference_batch_size" in (REPO / "configs" / f"{name}.yaml").read_text():
        tiny += ["regime.reference_batch_size=8", "regime.warmup_epochs=0"]
    result = run_cli(["train", "--config", f"configs/{name}.yaml", *tiny], timeout=600)
    assert_ok(result)
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["steps"] == 36 // 8, summary  # 48 images, a quarter for validation
    assert "  backend: dali\n" in (tmp_path / "runs" / "smoke" / "config.yaml").read_text()
