"""From a small-batch reference recipe to the values a (large-batch) run actually uses.

Method card
-----------
Papers
    Hoffer, Hubara & Soudry 2017, "Train longer, generalize better": the large-batch
    generalization gap comes from too few updates. Two of their fixes are arithmetic
    on the recipe: **+LR** multiplies every learning rate by ``sqrt(B_L / B_S)``, and
    **+RA** (regime adaptation) trains for as many *updates* as the small-batch recipe
    (their code multiplies epochs and milestones by ``B_L / B_S``, which equals the
    updates only when an epoch holds many large batches). Masters & Luschi 2018,
    "Revisiting small batch training": state the lr per sample, ``lr = B × base_lr``.
    Goyal et al. 2017, "Accurate, large minibatch SGD": a *gradual warm-up* from the
    small-batch lr to the scaled one over the first epochs (not in Hoffer et al.'s code).

Code
    ``make_plan`` is a pure function of a :class:`Recipe` (batch size, lr, epochs,
    milestones and warm-up of the reference), the run's batch size and the training-set
    size. With ``ratio = B / B_ref``:

    ============  =========================================================
    lr_rule       planned lr
    ============  =========================================================
    none          ``lr``
    linear        ``lr × ratio``
    sqrt          ``lr × sqrt(ratio)``           (Hoffer et al. +LR)
    per_sample    ``B × lr``; ``lr`` is the per-sample base lr and the
                  reference batch is not used    (Masters & Luschi)
    ============  =========================================================

    The reference runs ``train_size // B_ref`` steps per epoch (drop-last, as the
    small-batch recipe itself runs), so its updates, milestones and warm-up are known
    in steps. ``adapt=True`` plans in updates: total updates, every milestone and the
    warm-up are the reference's, in steps, whatever the dataset size; the run's epochs
    are ``ceil(total / steps_per_epoch)`` and the last one may be partial (the trainer
    stops at ``total_steps``). ``adapt=False`` keeps the reference's epochs, milestones
    and warm-up in epochs (so a larger batch makes fewer updates).

    Batches across epochs (``data.cross_epoch_batches``, on by default with ``adapt``):
    batches are drawn from one continuous stream of epoch permutations, so every sample
    is used once per pass; otherwise each epoch drops its incomplete last batch and the
    plan shows the share of each epoch actually used (51 % for 8,000 images at batch 4,096).

    ``warmup_epochs`` (the gradual warm-up, a switch of its own) ramps the lr linearly
    from the reference's lr to the planned lr over that many *reference* epochs,
    converted to this run's steps like the milestones; it replaces the recipe's own
    warm-up. :meth:`Plan.schedule` turns the plan into the per-step
    :class:`~dist_train.schedules.Schedule` the trainer uses; ``dist-train plan`` prints it.

Switches (``regime.*`` in the config)
    ``reference_batch_size`` (0 = no reference: the config's values are used as given
    and the ratio is 1), ``lr_rule`` (none | linear | sqrt | per_sample), ``adapt``,
    ``warmup_epochs``. ``linear``, ``sqrt`` and ``adapt`` need a reference batch size.
    Gradient clipping (the authors always clipped at norm 5) is ``train.grad_clip_norm``
    and is only reported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dist_train.config import Config, ScheduleConfig, check_plan_inputs, check_reference
from dist_train.data.batching import steps_per_epoch as epoch_steps
from dist_train.errors import ConfigError
from dist_train.lr_rules import LR_RULES
from dist_train.schedules import Schedule, milestone_steps, warmup_length


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
    """Warm-up in updates (takes precedence over ``warmup_epochs``)."""


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
    """Epochs the trainer runs; under ``adapt`` the last one may be partial."""
    milestones: tuple[float, ...]
    """Milestones in this run's epochs (under ``adapt``: the reference's steps / steps per epoch)."""
    milestone_steps: tuple[int, ...]
    """The milestones as optimizer steps: what the schedule uses."""
    warmup_epochs: float
    """Warm-up in this run's epochs (for display; the schedule uses ``warmup_total_steps``)."""
    warmup_steps: int
    """The recipe's warm-up in updates (``schedule.warmup_steps``), 0 if given in epochs."""
    warmup_total_steps: int
    """Warm-up length in this run's updates."""
    warmup_start_factor: float | None
    """Where the warm-up starts, as a fraction of ``lr``: ``reference.lr / lr`` for the gradual
    warm-up, None for the recipe's own (``schedule.warmup_start_factor``)."""
    gradual_warmup_epochs: float
    """``regime.warmup_epochs``: reference epochs of the gradual warm-up (0 = off)."""
    steps_per_epoch: int
    total_steps: int
    cross_epoch_batches: bool
    """Batches drawn across epoch boundaries (no sample dropped)."""
    epoch_share_used: float
    """Share of each epoch's samples that training uses."""
    train_size: int
    reference_steps_per_epoch: int
    reference_total_steps: int
    reference_milestone_steps: tuple[int, ...]
    reference_warmup_total_steps: int
    """The reference recipe's warm-up length in its own updates."""
    grad_clip_norm: float

    @property
    def passes(self) -> float:
        """Passes over the training set: samples drawn / training-set size."""
        return self.total_steps * self.batch_size / self.train_size

    @property
    def reference_passes(self) -> float:
        return self.reference_total_steps * self.reference.batch_size / self.train_size

    def schedule(self, cfg: ScheduleConfig) -> Schedule:
        """The per-step lr schedule of this plan; shape parameters (name, gamma, ...) come from ``cfg``."""
        return Schedule.shaped(
            cfg, self.total_steps, self.warmup_total_steps, self.milestone_steps, self.warmup_start_factor
        )


def make_plan(
    reference: Recipe,
    batch_size: int,
    lr_rule: str,
    adapt: bool,
    train_size: int,
    grad_clip_norm: float = 0.0,
    steps_per_epoch: int | None = None,
    cross_epoch_batches: bool | None = None,
    warmup_epochs: float = 0.0,
) -> Plan:
    """Derive the run's lr, epochs, milestones, warm-up and step counts from ``reference``.

    ``reference.batch_size == 0`` means "no reference": the ratio is 1 and the recipe is
    this run's own; ``linear``, ``sqrt`` and ``adapt`` then raise :class:`ConfigError`.
    ``steps_per_epoch``: the loader's own count when known (several processes pad each epoch);
    ``cross_epoch_batches`` None means ``adapt``; ``warmup_epochs`` is the gradual warm-up.
    """
    check_plan_inputs(lr_rule, batch_size, reference.batch_size, adapt, reference.lr, reference.epochs, warmup_epochs)
    if reference.batch_size == 0:
        reference = replace(reference, batch_size=batch_size)
    if train_size < batch_size:
        raise ConfigError(f"the training set has {train_size} samples, fewer than data.batch_size={batch_size}")
    if train_size < reference.batch_size:
        raise ConfigError(
            f"the training set has {train_size} samples, fewer than regime.reference_batch_size={reference.batch_size}"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ConfigError(f"steps per epoch must be at least 1, got {steps_per_epoch}")

    ratio = batch_size / reference.batch_size
    lr = LR_RULES[lr_rule].planned_lr(reference.lr, ratio, batch_size)

    across = adapt if cross_epoch_batches is None else cross_epoch_batches
    spe = epoch_steps(train_size, batch_size, across) if steps_per_epoch is None else steps_per_epoch
    ref_spe = train_size // reference.batch_size
    ref_total = reference.epochs * ref_spe
    ref_milestone_steps = milestone_steps(reference.milestones, ref_spe)
    ref_warmup = warmup_length(reference.warmup_steps, reference.warmup_epochs, ref_spe)
    # The gradual warm-up replaces the recipe's own; both count reference epochs (or steps).
    warm_epochs, warm_steps = reference.warmup_epochs, reference.warmup_steps
    if warmup_epochs > 0:
        warm_epochs, warm_steps = warmup_epochs, 0
    if adapt:  # in updates: the reference's, whatever the epoch length
        total = ref_total
        steps = ref_milestone_steps
        warmup_total = warmup_length(warm_steps, warm_epochs, ref_spe)
        epochs = -(-total // spe)
        milestones = tuple(step / spe for step in steps)
        warm_epochs = warmup_total / spe
    else:  # in epochs: the reference's epochs at this run's epoch length
        epochs = reference.epochs
        total = epochs * spe
        milestones = tuple(reference.milestones)
        steps = milestone_steps(milestones, spe)
        warmup_total = warmup_length(warm_steps, warm_epochs, spe)
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
        milestone_steps=steps,
        warmup_epochs=warm_epochs,
        warmup_steps=warm_steps,
        warmup_total_steps=warmup_total,
        warmup_start_factor=min(1.0, reference.lr / lr) if warmup_epochs > 0 else None,
        gradual_warmup_epochs=warmup_epochs,
        steps_per_epoch=spe,
        total_steps=total,
        cross_epoch_batches=across,
        epoch_share_used=1.0 if across else min(1.0, spe * batch_size / train_size),
        train_size=train_size,
        reference_steps_per_epoch=ref_spe,
        reference_total_steps=ref_total,
        reference_milestone_steps=ref_milestone_steps,
        reference_warmup_total_steps=ref_warmup,
        grad_clip_norm=grad_clip_norm,
    )


def plan_from_config(cfg: Config, train_size: int, steps_per_epoch: int | None = None) -> Plan:
    """The plan of a config: ``optim``/``schedule``/``train.epochs`` describe the reference recipe."""
    regime = cfg.regime
    # A config's 0 means "no reference": the recipe below takes this run's batch instead, so check it first.
    check_reference(regime.reference_batch_size, regime.lr_rule, regime.adapt)
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
        cross_epoch_batches=cross_epoch_batches(cfg),
        warmup_epochs=regime.warmup_epochs,
    )


def cross_epoch_batches(cfg: Config) -> bool:
    """``data.cross_epoch_batches``, its null resolved: on exactly with ``regime.adapt``."""
    switch = cfg.data.cross_epoch_batches
    return cfg.regime.adapt if switch is None else switch


def _num(x: float) -> str:
    """A compact number: integers without decimals, others with up to 4 significant digits."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4g}"


def _lr(x: float) -> str:
    return f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.4g}"


def _times(x: float) -> str:
    return f"(×{_num(x)})" if not math.isclose(x, 1.0) else ""


def _ratio(x: float) -> str:
    """An updates ratio: two decimals (×1.00 means the same number of updates)."""
    return f"(×{x:.2f})" if x >= 0.01 else f"(×{x:.2g})"


def _percent(x: float) -> str:
    return f"{100 * x:.1f} %" if x < 1 else "100 %"


def format_plan(plan: Plan) -> str:
    """A fixed-width table: one row per quantity, columns ``reference`` and ``this run``, then a note."""
    ref = plan.reference
    lr_note = _times(plan.lr_scale)
    if plan.lr_rule == "per_sample":
        lr_note = f"({plan.batch_size} × base lr {_lr(ref.lr)} per sample)"
    epochs_note = ""
    if plan.adapt:
        partial = plan.total_steps - (plan.epochs - 1) * plan.steps_per_epoch
        spe = plan.steps_per_epoch
        last = f"; the last epoch has {partial} of {spe} steps" if partial < spe else ""
        epochs_note = f"(regime adaptation, in updates{last})"
    updates_note = _ratio(plan.total_steps / plan.reference_total_steps) if plan.reference_total_steps else ""
    share_note = "(batches across epochs)" if plan.cross_epoch_batches else "(incomplete last batch dropped)"
    warmup_note = ""
    if plan.gradual_warmup_epochs and plan.warmup_total_steps:
        warmup_note = f"(gradual, lr {_lr(ref.lr)} → {_lr(plan.lr)}: regime.warmup_epochs)"
    clip = _num(plan.grad_clip_norm) if plan.grad_clip_norm > 0 else "off"
    ref_shared = plan.reference_steps_per_epoch * ref.batch_size / plan.train_size
    rows = [
        ("batch size", str(ref.batch_size), str(plan.batch_size), _times(plan.ratio)),
        (f"lr (rule {plan.lr_rule})", _lr(ref.lr), _lr(plan.lr), lr_note),
        ("epochs", str(ref.epochs), str(plan.epochs), epochs_note),
        ("steps/epoch", str(plan.reference_steps_per_epoch), str(plan.steps_per_epoch), ""),
        ("share of each epoch used", _percent(ref_shared), _percent(plan.epoch_share_used), share_note),
        ("passes over the data", f"{plan.reference_passes:.1f}", f"{plan.passes:.1f}", ""),
        (
            "milestones (epochs)",
            ", ".join(_num(m) for m in ref.milestones) or "-",
            ", ".join(_num(m) for m in plan.milestones) or "-",
            "",
        ),
        (
            "milestones (steps)",
            ", ".join(str(s) for s in plan.reference_milestone_steps) or "-",
            ", ".join(str(s) for s in plan.milestone_steps) or "-",
            "",
        ),
        ("warm-up epochs", _num(ref.warmup_epochs), _num(plan.warmup_epochs), ""),
        ("warm-up steps", str(plan.reference_warmup_total_steps), str(plan.warmup_total_steps), warmup_note),
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


def bn_recompute_plan(cfg: Config, train_size: int) -> str:
    """The plan's line for phase 3: how many images the BN statistics are recomputed over."""
    batch = cfg.data.batch_size // cfg.train.grad_accum_steps  # one micro-batch on every rank
    whole = max(1, train_size // batch)
    batches = min(cfg.swap.bn_recompute_batches or whole, whole)
    share = f"{batches * batch / max(1, train_size):.1%} of the training set"
    share = "the whole training set" if batches == whole else share
    return f"SWAP phase 3 BN recompute: {batches} batches × {batch} = {batches * batch} images ({share})"
