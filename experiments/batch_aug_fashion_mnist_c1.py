"""Batch augmentation (Hoffer et al. 2020) on a conv net: C1 on Fashion-MNIST, M ∈ {1, 2, 4}, same updates.

    python experiments/batch_aug_fashion_mnist_c1.py           # ~15 min on 2 idle CPU cores (3 seeds)
    python experiments/batch_aug_fashion_mnist_c1.py --smoke   # a check that it runs (2,048 images, 2 epochs)

The C1 recipe of ``configs/fashion_mnist_c1_sb.yaml`` (width 8, a seeded 10,000-image training subset,
the 10,000 test images): batch 128 distinct samples, each seen as M views that differ by a random
2-pixel pad-crop and a horizontal flip, lr 0.1 for every M with the same schedule and 10 epochs
(780 updates), copy-major layout, the tensor loader, one process. Compare with F1's gain of 2.2 points
at M = 8 (experiments/results/batch_aug_fashion_mnist.md). Writes ``batch_aug_fashion_mnist_c1.{md,json,png}``
to ``--out``; runs are kept under ``--runs``, so the same command continues an interrupted experiment.
"""

from __future__ import annotations

import sys

from batch_aug_mnist import BatchAug, main
from gap_fashion_mnist_c1 import C1_DATA

C1 = BatchAug(C1_DATA, 128, (1, 2, 4), 10, ("data.crop=pad", "data.pad=2", "data.flip=true"), __doc__)

if __name__ == "__main__":
    if "--backend" not in sys.argv:
        sys.argv += ["--backend", "tensor"]
    main(C1)
