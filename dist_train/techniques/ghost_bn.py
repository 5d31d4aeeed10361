"""Ghost Batch Normalization as a technique of the loop (``bn.ghost_batch_size``).

Method card
-----------
*Paper.* Hoffer, Hubara & Soudry (2017): batch-norm statistics over a huge batch are too clean; computing
them over small "ghost" batches inside it (training only) closes part of the large-batch gap.

*Code.* At model set-up, every BatchNorm1d/2d/3d of the model (built-in, plug-in or a model zoo's) becomes its
Ghost twin (:func:`~dist_train.nn.ghost_bn.convert_to_ghost_bn`: same parameters, buffers and state_dict
keys), after checking that a ghost fits the per-process batch (batch augmentation's M views included). The
layers, their maths and costs are described in :mod:`dist_train.nn.ghost_bn`. Each rank keeps its own
statistics (:mod:`dist_train.parallel` tells DDP not to overwrite them); evaluation and checkpoints use
their mean over the ranks (:mod:`dist_train.nn.bn_buffers`).

*Switch.* ``bn.ghost_batch_size`` (0 = plain BN). The summary records it as ``ghost_batch_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dist_train.callbacks import Callback
from dist_train.errors import ConfigError
from dist_train.nn.ghost_bn import convert_to_ghost_bn, ghost_layers

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer


def apply_ghost_bn(model: nn.Module, ghost_batch_size: int, micro_batch: int) -> None:
    """Swap the model's BatchNorms for Ghost BN, checking the ghost fits the per-process batch."""
    if not ghost_batch_size:
        return
    if ghost_batch_size > micro_batch:
        raise ConfigError(
            f"bn.ghost_batch_size={ghost_batch_size} is larger than the per-process batch {micro_batch} "
            "(data.batch_size / world size / train.grad_accum_steps)"
        )
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ConfigError("bn.ghost_batch_size is set but the model has no BatchNorm layer")
    convert_to_ghost_bn(model, ghost_batch_size)


class GhostBN(Callback):
    """Converts the model's BatchNorms at set-up; reports the ghost size in the summary (0: off)."""

    name = "ghost_bn"

    def __init__(self, ghost_batch_size: int, images_per_process: int) -> None:
        self.ghost_batch_size = ghost_batch_size
        self.images_per_process = images_per_process
        """One process's images per micro-batch: its distinct samples × the views of batch augmentation."""

    def setup(self, model: nn.Module) -> None:
        apply_ghost_bn(model, self.ghost_batch_size, self.images_per_process)

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]:
        layers = ghost_layers(trainer.module) if self.ghost_batch_size else {}
        return {"ghost_batch_size": self.ghost_batch_size, "ghost_bn_layers": layers}


def build(facts: RunFacts) -> GhostBN:
    return GhostBN(facts.cfg.bn.ghost_batch_size, facts.micro_batch * facts.cfg.augment.copies)
