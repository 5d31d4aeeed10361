"""From a small-batch reference recipe to the values a (large-batch) run actually uses.

Method card
-----------
Papers
    Hoffer, Hubara & Soudry 2017, "Train longer, generalize better": the large-batch
    generalization gap comes from too few updates. Two of their fixes are arithmetic
    on the recipe: **+LR** multiplies every learning rate by ``sqrt(B_L / B_S)``, and
    **+RA** (regime adaptation) multiplies the epochs and every lr-drop milestone by
    ``B_L / B_S`` so the large batch makes as many updates as the small-batch recipe.
    Masters & Luschi 2018, "Revisiting small batch training": state the lr per
    sample, ``lr = B × base_lr``, i.e. a constant mean weight update per gradient
    computation.

Code
    ``make_plan`` is a pure function of a :class:`Recipe` (batch size, lr, epochs,
    milestones and warm-up of the reference) and the run's batch size. With
    ``ratio = B / B_ref``:

    ============  =========================================================
    lr_rule       planned lr
    ============  =========================================================
    none          ``lr``
    linear        ``lr × ratio``
    sqrt          ``lr × sqrt(ratio)``           (Hoffer et al. +LR)
    per_sample    ``B × lr``; ``lr`` is the per-sample base lr and the
                  reference batch is not used    (Masters & Luschi)
    ============  =========================================================

    ``adapt=True`` (Hoffer et al. +RA): ``epochs = max(1, round(epochs × ratio))``,
    milestones × ratio, warm-up epochs × ratio; warm-up *steps* are updates and stay
    as they are. ``adapt=False`` keeps the reference's epochs, milestones and warm-up.
    Steps per epoch are ``train_size // B`` (or the loader's exact count when given),
    so with ``adapt`` and a train size divisible by both batches the total number of
    updates equals the reference's. :meth:`Plan.schedule` turns the plan into the
    per-step :class:`~dist_train.optim.Schedule` the trainer uses.

Switches (``regime.*`` in the config)
    ``reference_batch_size`` (0 = no reference: the config's values are used as given
    and the ratio is 1), ``lr_rule`` (none | linear | sqrt | per_sample), ``adapt``.
    ``linear``, ``sqrt`` and ``adapt`` need a reference batch size. Gradient clipping
    (the authors always clipped at norm 5) is ``train.grad_clip_norm`` and is only
    reported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dist_train.config import Config, ScheduleConfig
from dist_train.errors import ConfigError
from dist_train.optim import Schedule

LR_RULES = ("none", "linear", "sqrt", "per_sample")
_NEEDS_REFERENCE = ("linear", "sqrt")


@dataclass(frozen=True)
class Recipe:
    """What a config states: the reference recipe, or the run itself when there is no reference."""

    batch_size: int
    """Reference batch (``regime.reference_batch_size``, or ``data.batch_size`` when that is 0)."""
    lr: float
    """``optim.lr`` (the per-sample base lr under ``per_sample``)."""
    epochs: int
    milestones: tuple[float, ...]
    """lr-drop milestones in epochs."""
    warmup_epochs: float
    warmup_steps: int
    """Warm-up in updates; never scaled."""


def _warmup_steps(warmup_steps: int, warmup_epochs: float, steps_per_epoch: int) -> int:
    return warmup_steps if warmup_steps > 0 else round(warmup_epochs * steps_per_epoch)


@dataclass(frozen=True)
class Plan:
    """The values a run uses, derived from a reference recipe and the run's batch size."""

    batch_size: int
    reference: Recipe
    lr_rule: str
    adapt: bool
    ratio: float
    """``batch_size / reference.batch_size``."""
    lr_scale: float
    """``lr / reference.lr``."""
    lr: float
    epochs: int
    milestones: tuple[float, ...]
    warmup_epochs: float
    warmup_steps: int
    steps_per_epoch: int
    total_steps: int
    reference_steps_per_epoch: int
    reference_total_steps: int
    grad_clip_norm: float

    @property
    def warmup_total_steps(self) -> int:
        """Warm-up length in updates: ``warmup_steps`` if set, else warm-up epochs × steps per epoch."""
        return _warmup_steps(self.warmup_steps, self.warmup_epochs, self.steps_per_epoch)

    @property
    def reference_warmup_total_steps(self) -> int:
        """The reference recipe's warm-up length in its own updates."""
        ref = self.reference
        return _warmup_steps(ref.warmup_steps, ref.warmup_epochs, self.reference_steps_per_epoch)

    @property
    def milestone_steps(self) -> tuple[int, ...]:
        """The planned milestones as optimizer steps."""
        return tuple(round(m * self.steps_per_epoch) for m in self.milestones)

    def schedule(self, cfg: ScheduleConfig) -> Schedule:
        """The per-step lr schedule of this plan; shape parameters (name, gamma, ...) come from ``cfg``."""
        return Schedule(
            name=cfg.name,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_total_steps,
            milestone_steps=self.milestone_steps,
            gamma=cfg.gamma,
            warmup_start_factor=cfg.warmup_start_factor,
            min_lr_factor=cfg.min_lr_factor,
            factors=tuple(cfg.factors),
        )


def _no_reference_error(what: str) -> ConfigError:
    return ConfigError(f"{what} needs a reference recipe: set regime.reference_batch_size (it is 0)")


def make_plan(
    reference: Recipe,
    batch_size: int,
    lr_rule: str,
    adapt: bool,
    train_size: int,
    grad_clip_norm: float = 0.0,
    steps_per_epoch: int | None = None,
) -> Plan:
    """Derive the run's lr, epochs, milestones, warm-up and step counts from ``reference``.

    ``reference.batch_size == 0`` means "no reference": the ratio is 1 and the recipe is
    this run's own; ``linear``, ``sqrt`` and ``adapt`` then raise :class:`ConfigError`.
    """
    if lr_rule not in LR_RULES:
        raise ConfigError(f"regime.lr_rule must be one of {', '.join(LR_RULES)}, got '{lr_rule}'")
    if batch_size < 1:
        raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
    if reference.batch_size < 0:
        raise ConfigError(f"regime.reference_batch_size must be positive (or 0 for none), got {reference.batch_size}")
    if reference.batch_size == 0:
        if lr_rule in _NEEDS_REFERENCE:
            raise _no_reference_error(f"regime.lr_rule={lr_rule}")
        if adapt:
            raise _no_reference_error("regime.adapt=true")
        reference = replace(reference, batch_size=batch_size)
    if reference.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {reference.lr}")
    if reference.epochs < 1:
        raise ConfigError(f"train.epochs must be at least 1, got {reference.epochs}")
    if train_size < batch_size:
        raise ConfigError(f"the training set has {train_size} samples, fewer than data.batch_size={batch_size}")
    if train_size < reference.batch_size:
        raise ConfigError(
            f"the training set has {train_size} samples, fewer than regime.reference_batch_size={reference.batch_size}"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ConfigError(f"steps per epoch must be at least 1, got {steps_per_epoch}")

    ratio = batch_size / reference.batch_size
    if lr_rule == "linear":
        lr = reference.lr * ratio
    elif lr_rule == "sqrt":
        lr = reference.lr * math.sqrt(ratio)
    elif lr_rule == "per_sample":
        lr = batch_size * reference.lr
    else:
        lr = reference.lr

    if adapt:
        epochs = max(1, round(reference.epochs * ratio))
        milestones = tuple(m * ratio for m in reference.milestones)
        warmup_epochs = reference.warmup_epochs * ratio
    else:
        epochs = reference.epochs
        milestones = tuple(reference.milestones)
        warmup_epochs = reference.warmup_epochs

    spe = train_size // batch_size if steps_per_epoch is None else steps_per_epoch
    ref_spe = train_size // reference.batch_size
    return Plan(
        batch_size=batch_size,
        reference=reference,
        lr_rule=lr_rule,
        adapt=adapt,
        ratio=ratio,
        lr_scale=lr / reference.lr,
        lr=lr,
        epochs=epochs,
        milestones=milestones,
        warmup_epochs=warmup_epochs,
        warmup_steps=reference.warmup_steps,
        steps_per_epoch=spe,
        total_steps=epochs * spe,
        reference_steps_per_epoch=ref_spe,
        reference_total_steps=reference.epochs * ref_spe,
        grad_clip_norm=grad_clip_norm,
    )


def plan_from_config(cfg: Config, train_size: int, steps_per_epoch: int | None = None) -> Plan:
    """The plan of a config: ``optim``/``schedule``/``train.epochs`` describe the reference recipe."""
    regime = cfg.regime
    if regime.reference_batch_size == 0:
        if regime.lr_rule in _NEEDS_REFERENCE:
            raise _no_reference_error(f"regime.lr_rule={regime.lr_rule}")
        if regime.adapt:
            raise _no_reference_error("regime.adapt=true")
    reference = Recipe(
        batch_size=regime.reference_batch_size or cfg.data.batch_size,
        lr=cfg.optim.lr,
        epochs=cfg.train.epochs,
        milestones=tuple(float(m) for m in cfg.schedule.milestones),
        warmup_epochs=float(cfg.schedule.warmup_epochs),
        warmup_steps=cfg.schedule.warmup_steps,
    )
    return make_plan(
        reference,
        batch_size=cfg.data.batch_size,
        lr_rule=regime.lr_rule,
        adapt=regime.adapt,
        train_size=train_size,
        grad_clip_norm=cfg.train.grad_clip_norm,
        steps_per_epoch=steps_per_epoch,
    )


def _num(x: float) -> str:
    """A compact number: integers without decimals, others with up to 4 significant digits."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4g}"


def _lr(x: float) -> str:
    return f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.4g}"


def _times(x: float) -> str:
    return f"(×{_num(x)})" if not math.isclose(x, 1.0) else ""


def format_plan(plan: Plan) -> str:
    """A fixed-width table: one row per quantity, columns ``reference`` and ``this run``, then a note."""
    ref = plan.reference
    lr_note = _times(plan.lr_scale)
    if plan.lr_rule == "per_sample":
        lr_note = f"({plan.batch_size} × base lr {_lr(ref.lr)} per sample)"
    epochs_note = "(regime adaptation)" if plan.adapt and plan.epochs != ref.epochs else ""
    if plan.total_steps == plan.reference_total_steps:
        updates_note = "(same as reference)"
    elif plan.reference_total_steps:
        updates_note = _times(plan.total_steps / plan.reference_total_steps)
    else:
        updates_note = ""
    clip = _num(plan.grad_clip_norm) if plan.grad_clip_norm > 0 else "off"
    rows = [
        ("batch size", str(ref.batch_size), str(plan.batch_size), _times(plan.ratio)),
        (f"lr (rule {plan.lr_rule})", _lr(ref.lr), _lr(plan.lr), lr_note),
        ("epochs", str(ref.epochs), str(plan.epochs), epochs_note),
        (
            "milestones (epochs)",
            ", ".join(_num(m) for m in ref.milestones) or "-",
            ", ".join(_num(m) for m in plan.milestones) or "-",
            "",
        ),
        (
            "milestones (steps)",
            ", ".join(str(round(m * plan.reference_steps_per_epoch)) for m in ref.milestones) or "-",
            ", ".join(str(s) for s in plan.milestone_steps) or "-",
            "",
        ),
        ("warm-up epochs", _num(ref.warmup_epochs), _num(plan.warmup_epochs), ""),
        ("warm-up steps", str(plan.reference_warmup_total_steps), str(plan.warmup_total_steps), ""),
        ("steps/epoch", str(plan.reference_steps_per_epoch), str(plan.steps_per_epoch), ""),
        ("total updates", str(plan.reference_total_steps), str(plan.total_steps), updates_note),
        ("grad clip", "-", clip, ""),
    ]
    label_w = max(len(r[0]) for r in rows)
    ref_w = max(len("reference"), *(len(r[1]) for r in rows))
    run_w = max(len("this run"), *(len(r[2]) for r in rows))
    lines = [f"{'':<{label_w}}  {'reference':>{ref_w}}  {'this run':>{run_w}}"]
    for label, a, b, note in rows:
        line = f"{label:<{label_w}}  {a:>{ref_w}}  {b:>{run_w}}"
        lines.append(f"{line}   {note}" if note else line)
    return "\n".join(lines)
