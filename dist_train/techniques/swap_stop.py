"""SWAP's stopping rule for its first phase: stop once an epoch's training accuracy reaches a threshold.

Method card
-----------
*Paper.* Gupta, Akle Serrano & DeCoste (2020) end the large-batch phase at a training accuracy, then refine
small-batch replicas and average them (the phases: :mod:`dist_train.swap`).

*Code.* After each epoch of phase 1, if ``train/acc`` reached ``swap.phase1_train_acc``, the callback asks the
loop to stop (``trainer.stop_requested``, which checkpoints keep). :mod:`dist_train.swap` adds it to phase 1.

*Switch.* ``swap.phase1_train_acc`` (0 = only the epoch limit ``swap.phase1_max_epochs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dist_train.callbacks import Callback

if TYPE_CHECKING:
    from dist_train.trainer import Trainer


class StopAtTrainAccuracy(Callback):
    """Phase-1 callback: request the end of training once an epoch's training accuracy reaches a threshold."""

    name = "swap_phase1"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def on_epoch_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        if self.threshold and values["train/acc"] >= self.threshold:
            trainer.stop_requested = True
