"""Train from a Python script with your own model and data objects; every rank runs it:

dist-torchrun --nproc-per-node=2 examples/api_script.py out_dir=runs [more key=value overrides]
"""

import os
import sys

import numpy as np
from torch import nn

import dist_train


def patterns(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3, 16, 16) uint8 images whose mean brightness tells the class (0-3), and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    images = (rng.integers(0, 40, (count, 3, 16, 16)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    return images, labels


def main() -> None:
    config = dist_train.load_config("quickstart", ["name=api_script", "train.epochs=2", *sys.argv[1:]])
    train_images, train_labels = patterns(512, seed=0)
    val_images, val_labels = patterns(128, seed=1)
    data = dist_train.ArraySplits(train_images, train_labels, val_images, val_labels, classes=("a", "b", "c", "d"))
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )
    summary = dist_train.train(config, model=model, dataset=data)
    if os.environ.get("RANK", "0") == "0":
        updates = dist_train.make_plan(config, len(train_labels)).total_steps
        print(f"api_script: val acc {summary['val_acc']:.2%} after {updates} planned updates")


if __name__ == "__main__":
    main()
