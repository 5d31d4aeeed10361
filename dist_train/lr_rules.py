"""The learning-rate rules, in one table (``regime.lr_rule``): the planned lr from the reference's.

A leaf module (no torch): ``regime.lr_rule``'s choices, its validation and the plan derive from
:data:`LR_RULES`, so a new rule is one function plus one row here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def _none(lr: float, ratio: float, batch_size: int) -> float:
    return lr


def _linear(lr: float, ratio: float, batch_size: int) -> float:
    return lr * ratio


def _sqrt(lr: float, ratio: float, batch_size: int) -> float:
    return lr * math.sqrt(ratio)


def _per_sample(lr: float, ratio: float, batch_size: int) -> float:
    return batch_size * lr


@dataclass(frozen=True)
class LrRule:
    """One rule."""

    name: str
    """``regime.lr_rule``'s value."""
    planned_lr: Callable[[float, float, int], float]
    """The run's lr from ``(optim.lr, batch / reference batch, batch)``."""
    needs_reference: bool
    """It scales by the reference batch, so ``regime.reference_batch_size`` must be set."""


LR_RULES: dict[str, LrRule] = {
    rule.name: rule
    for rule in (
        LrRule("none", _none, needs_reference=False),
        LrRule("linear", _linear, needs_reference=True),
        LrRule("sqrt", _sqrt, needs_reference=True),
        LrRule("per_sample", _per_sample, needs_reference=False),
    )
}
"""Every rule by name."""

LR_RULE_NAMES = tuple(LR_RULES)
"""``regime.lr_rule``'s choices."""
