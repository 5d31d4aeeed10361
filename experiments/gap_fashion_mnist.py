"""The large-batch generalization gap on Fashion-MNIST, the fixes of Hoffer et al. (2017) and a warm-up.

    python experiments/gap_fashion_mnist.py            # ~35 min on 2 idle CPU cores (3 seeds)
    python experiments/gap_fashion_mnist.py --smoke    # a check that it runs (2,048 images, 1 epoch)

MNIST "F1" on Fashion-MNIST (the real 60,000 / 10,000 split), one process, the small-batch recipe
(batch 128, lr 0.1, 5 epochs = 2,340 updates, ×0.1 at 60 % and 80 %, gradient norm clipped at 5)
against batch 2,048 (16×) in six variants: LB, LB+LR (sqrt lr), LB+LR+GBN (ghost batches of 128),
LB+LR+GBN+RA (regime adaptation in updates: the SB recipe's 2,340 updates, batches across epochs),
and LB+LR+warm-up (the no-RA recipe of experiments/results/lb_recipe_fashion_mnist.md: the lr ramps
from 0.1 to 0.4 over the first reference epoch). Columns: validation accuracy (mean ± std over seeds),
updates, wall time, and the slope and R² of ||w_t - w_0|| ≈ a·log t + b up to the first milestone.
Writes ``gap_fashion_mnist.{md,json,png}`` to ``--out``; runs are kept under ``--runs``, so the same
command continues an interrupted experiment.
"""

from __future__ import annotations

from common import FASHION_DATA
from gap_mnist import VARIANTS, Gap, main

FASHION_VARIANTS = {**VARIANTS, "LB+LR+warm-up": ["large", "regime.lr_rule=sqrt", "regime.warmup_epochs=1"]}

if __name__ == "__main__":
    main(Gap(FASHION_DATA, small=128, factor=16, epochs=5, variants=FASHION_VARIANTS, doc=__doc__))
