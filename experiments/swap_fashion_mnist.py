"""SWAP (Gupta et al. 2020) with 4 replicas against small- and large-batch training on Fashion-MNIST.

    python experiments/swap_fashion_mnist.py            # ~45 min on 2 idle CPU cores (3 seeds)
    python experiments/swap_fashion_mnist.py --smoke    # a check that it runs (2,048 images)

MNIST F1 on Fashion-MNIST (the real 60,000 / 10,000 split), three methods per seed:

* SB: batch 128, lr 0.1, 5 epochs, step decay at 60 % / 80 %, one process;
* SWAP: 4 processes under torchrun (gloo, one thread each; on 2 cores they share them). Phase 1:
  batch 2,048 DDP, lr 0.1 × sqrt(16) = 0.4 reached by a one-epoch warm-up from 0.1 (the no-RA
  recipe of lb_recipe_fashion_mnist.md), constant, until an epoch's training accuracy reaches 88 %
  or 8 epochs; phase 2: 4 replicas (replica_size 1) × 1 epoch of batch 128, cosine lr from 0.05;
  phase 3: the average, BN recomputed;
* LB: the phase-1 recipe with step decay, one process, as many epochs as fit in SWAP's mean wall time.

Sequential updates: SWAP counts phase 1 plus one replica's phase 2. Writes
``swap_fashion_mnist.{md,json}`` to ``--out``; runs are kept under ``--runs``, so the same command
continues an interrupted experiment. The SWAP thresholds are a first guess, not tuned here.
"""

from __future__ import annotations

from common import FASHION_DATA
from swap_mnist import Swap, main

DEFAULTS = {
    "small_batch": 128,
    "large_batch": 2048,
    "lr": 0.1,
    "warmup_epochs": 1.0,
    "small_epochs": 5,
    "phase1_train_acc": 0.88,
    "phase1_max_epochs": 8,
    "phase2_epochs": 1,
    "phase2_lr": 0.05,
    "nproc": 4,
}

if __name__ == "__main__":
    main(Swap(FASHION_DATA, DEFAULTS, __doc__))
