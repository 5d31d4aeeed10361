"""Batch augmentation (Hoffer et al. 2020) on Fashion-MNIST: M ∈ {1, 2, 4, 8} views per sample, same updates.

    python experiments/batch_aug_fashion_mnist.py           # ~40 min on 2 idle CPU cores (3 seeds)
    python experiments/batch_aug_fashion_mnist.py --smoke   # a check that it runs (2,048 images, 2 epochs)

MNIST F1 on Fashion-MNIST (the real 60,000 / 10,000 split), batch 128 distinct samples, each seen
as M views that differ by a random 2-pixel pad-crop and a horizontal flip (clothes stay clothes
mirrored), lr 0.1 for every M with the same schedule and 4 epochs (1,872 updates), copy-major
layout, DALI CPU pipelines, one process. The table gives validation accuracy against updates
after every epoch and, per M, the updates needed to reach the final accuracy of M = 1 (the plain
small-batch run); the plot shows the curves. Writes ``batch_aug_fashion_mnist.{md,json,png}`` to
``--out``; runs are kept under ``--runs``, so the same command continues an interrupted experiment.
"""

from __future__ import annotations

from batch_aug_mnist import BatchAug, main
from common import FASHION_DATA

FASHION = BatchAug(FASHION_DATA, 128, (1, 2, 4, 8), 4, ("data.crop=pad", "data.pad=2", "data.flip=true"), __doc__)

if __name__ == "__main__":
    main(FASHION)
