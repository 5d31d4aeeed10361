"""The learning-rate schedules, in one table (``schedule.name``), and the per-step :class:`Schedule`.

A leaf module (no torch): the config's choices (``schedule.name``, ``swap.phase2.schedule``) and the
scheduler (:func:`dist_train.optim.build_scheduler`) derive from :data:`SCHEDULES`, so a new schedule is
one function of ``(schedule, step)`` plus one row here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dist_train.config.schema import ScheduleConfig


def warmup_length(warmup_steps: int, warmup_epochs: float, steps_per_epoch: int) -> int:
    """A warm-up in optimizer steps: ``warmup_steps`` when given, else ``warmup_epochs`` of ``steps_per_epoch``."""
    return warmup_steps if warmup_steps > 0 else round(warmup_epochs * steps_per_epoch)


def milestone_steps(milestones: Sequence[float], steps_per_epoch: int) -> tuple[int, ...]:
    """Milestones in epochs as optimizer steps."""
    return tuple(round(m * steps_per_epoch) for m in milestones)


@dataclass(frozen=True)
class Schedule:
    """The lr multiplier as a pure function of the optimizer step: a linear warm-up, then the named shape."""

    name: str
    total_steps: int
    warmup_steps: int
    milestone_steps: tuple[int, ...]
    gamma: float
    warmup_start_factor: float
    min_lr_factor: float
    factors: tuple[float, ...] = ()
    power: float = 2.0

    @classmethod
    def shaped(
        cls,
        cfg: ScheduleConfig,
        total_steps: int,
        warmup_steps: int,
        milestones: tuple[int, ...],
        warmup_start_factor: float | None = None,
    ) -> Schedule:
        """The schedule over these step counts, shaped by ``cfg`` (name, gamma, factors, floor, warm-up start;
        ``warmup_start_factor`` replaces the latter when given)."""
        return cls(
            name=cfg.name,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            milestone_steps=milestones,
            gamma=cfg.gamma,
            warmup_start_factor=cfg.warmup_start_factor if warmup_start_factor is None else warmup_start_factor,
            min_lr_factor=cfg.min_lr_factor,
            factors=tuple(cfg.factors),
            power=cfg.power,
        )

    @classmethod
    def from_config(cls, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> Schedule:
        """``cfg`` as given, over ``epochs`` of ``steps_per_epoch`` steps: what a run without a reference recipe
        plans (:meth:`dist_train.regime.Plan.schedule`), for loops that do without a plan."""
        warmup = warmup_length(cfg.warmup_steps, cfg.warmup_epochs, steps_per_epoch)
        return cls.shaped(cfg, steps_per_epoch * epochs, warmup, milestone_steps(cfg.milestones, steps_per_epoch))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        return SCHEDULES.get(self.name, SCHEDULES["constant"]).multiplier(self, step)


def _constant(schedule: Schedule, step: int) -> float:
    return 1.0


def _step(schedule: Schedule, step: int) -> float:
    passed = sum(step >= m for m in schedule.milestone_steps)
    if schedule.factors:
        return schedule.factors[passed - 1] if passed else 1.0
    return schedule.gamma**passed


def _cosine(schedule: Schedule, step: int) -> float:
    span = max(1, schedule.total_steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    return schedule.min_lr_factor + (1 - schedule.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _poly(schedule: Schedule, step: int) -> float:
    span = max(1, schedule.total_steps - schedule.warmup_steps)
    remaining = max(0.0, 1.0 - (step - schedule.warmup_steps) / span)
    return schedule.min_lr_factor + (1 - schedule.min_lr_factor) * remaining**schedule.power


@dataclass(frozen=True)
class ScheduleShape:
    """One schedule: the lr multiplier after the warm-up."""

    name: str
    """``schedule.name``'s value."""
    multiplier: Callable[[Schedule, int], float]
    """The multiplier at an optimizer step at or after the warm-up."""
    uses_milestones: bool
    """It changes the lr at ``schedule.milestones`` (a replica of SWAP's phase 2 has none)."""


SCHEDULES: dict[str, ScheduleShape] = {
    shape.name: shape
    for shape in (
        ScheduleShape("constant", _constant, uses_milestones=False),
        ScheduleShape("step", _step, uses_milestones=True),
        ScheduleShape("cosine", _cosine, uses_milestones=False),
        ScheduleShape("poly", _poly, uses_milestones=False),
    )
}
"""Every schedule by name (a name outside the table keeps the lr constant)."""


def describe_schedule(cfg: ScheduleConfig) -> str:
    """``schedule``'s shape in words, for the plan (the steps and warm-up are in its table)."""
    end = f"{cfg.min_lr_factor:g} × lr"
    shapes = {
        "constant": "constant",
        "step": f"step (× {cfg.gamma:g} at each milestone)" if not cfg.factors else "step (factors per milestone)",
        "cosine": f"cosine to {end}",
        "poly": f"poly (power {cfg.power:g}) to {end}",
    }
    return shapes.get(cfg.name, cfg.name)


SCHEDULE_NAMES = tuple(SCHEDULES)
"""``schedule.name``'s choices."""
WITHOUT_MILESTONES = tuple(name for name, shape in SCHEDULES.items() if not shape.uses_milestones)
"""``swap.phase2.schedule``'s choices."""
