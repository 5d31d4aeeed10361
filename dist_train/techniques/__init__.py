"""Every technique in one list: where its method card is, which config section switches it, how it acts.

A technique that acts on the training loop is a :class:`~dist_train.callbacks.Callback` built from the run's
facts by its row's ``build`` (returning None when its section switches it off); the others act before the
loop (regime adaptation, in the plan) or in every loader backend (batch augmentation) and have no builder.
Adding a technique is one module (method card, callback, ``build``) plus one row here and one config section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dist_train.callbacks import Callback
from dist_train.config import Config
from dist_train.distributed import DistContext
from dist_train.regime import Plan
from dist_train.techniques import diffusion, ghost_bn, noise_scale, rank_health, target


@dataclass(frozen=True)
class RunFacts:
    """What a technique's builder knows of the run."""

    cfg: Config
    ctx: DistContext
    plan: Plan
    micro_batch: int
    """Distinct samples per process and micro-batch."""


@dataclass(frozen=True)
class Technique:
    name: str
    section: str
    """The config section that switches and tunes it."""
    module: str
    """The module that holds its method card (and its callback)."""
    build: Callable[[RunFacts], Callback | None] | None = None
    """Its callback for a run (None: off); no builder: it acts outside the loop."""


TECHNIQUES: tuple[Technique, ...] = (
    Technique("regime_adaptation", "regime", "dist_train.regime"),
    Technique("batch_augmentation", "augment", "dist_train.data.views"),
    Technique("ghost_bn", "bn", "dist_train.techniques.ghost_bn", ghost_bn.build),
    Technique("weight_diffusion", "diffusion", "dist_train.techniques.diffusion", diffusion.build),
    Technique("swap", "swap", "dist_train.swap"),  # phase 1 adds dist_train.techniques.swap_stop's callback
    Technique("rank_health", "train", "dist_train.techniques.rank_health", rank_health.build),
    Technique("train_to_target", "target", "dist_train.techniques.target", target.build),
    # Last: its step_batches wrapper must be the outermost, seeing each micro-batch as train_step takes it.
    Technique("noise_scale", "noise_scale", "dist_train.techniques.noise_scale", noise_scale.build),
)
"""In the order their callbacks see each event."""


def build_callbacks(facts: RunFacts, extra: Sequence[Callback] = ()) -> list[Callback]:
    """The run's callbacks: the caller's (``extra``), then each technique's that is switched on."""
    built = (technique.build(facts) for technique in TECHNIQUES if technique.build is not None)
    return [*extra, *(callback for callback in built if callback is not None)]
