"""Train to a target: end the run after the first epoch whose training loss (or accuracy) reaches it.

Method card
-----------
*Why.* Time-to-target is how large-batch training is compared (MLPerf trains each submission to a fixed
quality), and steps-to-target is what the noise scale predicts (McCandlish et al. 2018, S/S_min = 1 +
B_noise/B; :mod:`dist_train.techniques.noise_scale`): a sweep over batch sizes and learning rates then
spends on each run only the epochs it needs, and ``train.epochs`` is its limit.

*Code.* After each epoch, if its mean training loss is at or below ``target.train_loss`` or its training
accuracy at or above ``target.train_acc``, the callback asks the loop to stop (``trainer.stop_requested``,
which checkpoints keep, so a resumed run stops where it had decided to). summary.json's ``target`` says
whether it was reached, at which epoch and after how many updates.

*Switch.* ``target.train_loss`` and ``target.train_acc`` (0 = no target; either reached ends the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_train.callbacks import Callback
from dist_train.config import TargetConfig

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer


class StopAtTarget(Callback):
    """Requests the end of training after the first epoch that reaches the training loss or accuracy target."""

    name = "target"

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self.reached: dict[str, int] | None = None

    def on_epoch_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        loss, accuracy = self.target.train_loss, self.target.train_acc
        if self.reached is None and (
            (loss and values["train/loss"] <= loss) or (accuracy and values["train/acc"] >= accuracy)
        ):
            self.reached = {"epoch": trainer.epoch, "step": trainer.step}
        trainer.stop_requested |= self.reached is not None

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]:
        wanted = {"train_loss": self.target.train_loss, "train_acc": self.target.train_acc}
        return {"target": wanted | {"reached": self.reached is not None} | (self.reached or {})}

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reached = state.get("reached")


def build(facts: RunFacts) -> Callback | None:
    """The stop when the run has a target."""
    target = facts.cfg.target
    return StopAtTarget(target) if target.train_loss or target.train_acc else None
