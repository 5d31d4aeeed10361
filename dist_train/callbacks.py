"""The one way a technique acts on training: a :class:`Callback`, whose events the loop fires.

Every event is a no-op by default, so a technique overrides only the events it needs. The events, in the
order a run meets them:

* :meth:`~Callback.setup`: the model is built (unwrapped, on its device), before the optimizer and DDP
  see it: model surgery (Ghost BN's conversion), or remembering the initial weights.
* :meth:`~Callback.on_epoch_start` and :meth:`~Callback.step_batches`: an epoch's steps are about to run;
  a technique may wrap the iterator of each step's micro-batches (e.g. to time how long each takes to come).
* :meth:`~Callback.before_optimizer_step`: every micro-batch's backward is done and the gradients are
  reduced over the ranks, before clipping and the optimizer step (a gradient statistic, an optimizer-side
  technique).
* :meth:`~Callback.on_step_end`: after the optimizer and the scheduler stepped.
* :meth:`~Callback.on_log`: at a log step, after the host read the step's metrics; may add values to the
  record being logged.
* :meth:`~Callback.on_epoch_end`: after an epoch, before evaluation; may set ``trainer.stop_requested``.
* :meth:`~Callback.on_fit_end`: the run is over; returns what to add to the summary.
* :meth:`~Callback.state_dict` / :meth:`~Callback.load_state_dict`: what a checkpoint keeps of it.

Techniques are registered in one list, :data:`dist_train.techniques.TECHNIQUES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from dist_train.trainer import Trainer

StepBatches = Iterable[list[tuple[Any, Any]]]
"""An epoch's micro-batches, a step's worth (``grad_accum_steps`` (images, labels) pairs) at a time."""


class Callback:
    """A hook into the training loop; override the events you need (every one is a no-op here)."""

    name: str = "callback"
    """Its key in checkpoints (unique among a run's callbacks)."""

    def setup(self, model: nn.Module) -> None:
        """The freshly built model, before the optimizer, DDP and ``torch.compile`` (change it in place)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts its steps (after a mid-epoch resume: at the checkpoint's step)."""

    def step_batches(self, trainer: Trainer, batches: StepBatches) -> StepBatches:
        """The epoch's step batches as the loop will take them (wrap to time or change them)."""
        return batches

    def before_optimizer_step(self, trainer: Trainer) -> None:
        """Gradients are ready (reduced over the ranks), before clipping and ``optimizer.step()``."""

    def on_step_end(self, trainer: Trainer) -> None:
        """``trainer.step`` optimizer steps are done."""

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        """A log step (every ``train.log_every``): add to ``values``, the record about to be logged."""

    def on_epoch_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        """An epoch ended with ``values`` (train loss, accuracy, time); set ``trainer.stop_requested`` to stop."""

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]:
        """Training is over: what to add to the run's summary."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""
