"""The reference-recipe → run plan: lr rules, regime adaptation, schedules and the table."""

import math
import re
from pathlib import Path

import pytest

from dist_train.config import ScheduleConfig, load_config
from dist_train.errors import ConfigError
from dist_train.optim import Schedule
from dist_train.regime import Plan, Recipe, format_plan, make_plan, plan_from_config

REF = Recipe(batch_size=128, lr=0.1, epochs=10, milestones=(4.0, 8.0), warmup_epochs=1.0, warmup_steps=0)
TRAIN = 8192  # divisible by 128 and 4096: 64 vs 2 steps per epoch
REPO = Path(__file__).resolve().parents[1]


def plan(rule: str, adapt: bool, batch: int = 4096, ref: Recipe = REF, **kw) -> Plan:
    return make_plan(ref, batch_size=batch, lr_rule=rule, adapt=adapt, train_size=TRAIN, **kw)


@pytest.mark.parametrize(
    ("rule", "expected_lr"),
    [("none", 0.1), ("linear", 0.1 * 32), ("sqrt", 0.1 * math.sqrt(32)), ("per_sample", 4096 * 0.1)],
)
@pytest.mark.parametrize("adapt", [False, True])
def test_lr_rules(rule, expected_lr, adapt):
    p = plan(rule, adapt)
    assert p.ratio == 32.0
    assert p.lr == pytest.approx(expected_lr)
    assert p.lr_scale == pytest.approx(expected_lr / 0.1)
    assert p.lr_rule == rule and p.adapt is adapt and p.reference == REF
    assert p.steps_per_epoch == 2 and p.reference_steps_per_epoch == 64
    assert p.reference_total_steps == 640
    if adapt:
        assert p.epochs == 320 and p.milestones == pytest.approx((128.0, 256.0))
        assert p.warmup_epochs == pytest.approx(32.0)
        assert p.total_steps == 640 == p.reference_total_steps
    else:
        assert p.epochs == 10 and p.milestones == (4.0, 8.0) and p.warmup_epochs == 1.0
        assert p.total_steps == 20


def test_sqrt_rule_matches_table_example():
    p = plan("sqrt", adapt=True, ref=Recipe(128, 0.1, 100, (81.0, 122.0, 164.0), 0.0, 0), batch=4096)
    assert p.lr == pytest.approx(0.565685, rel=1e-5)
    assert p.epochs == 3200 and p.milestones == pytest.approx((2592.0, 3904.0, 5248.0))


def test_adapt_keeps_updates_equal_and_scales_warmup():
    p = plan("none", adapt=True)
    assert p.warmup_total_steps == 64 == p.reference_warmup_total_steps  # 1 epoch of 64 steps vs 32 epochs of 2
    assert p.milestone_steps == (256, 512)  # the reference's 4 × 64 and 8 × 64


def test_warmup_steps_are_never_scaled():
    ref = Recipe(128, 0.1, 10, (), warmup_epochs=3.0, warmup_steps=50)
    for adapt in (False, True):
        p = plan("linear", adapt, ref=ref)
        assert p.warmup_steps == 50 and p.warmup_total_steps == 50


def test_smaller_batch_adapt_shrinks_and_keeps_at_least_one_epoch():
    p = make_plan(REF, batch_size=64, lr_rule="linear", adapt=True, train_size=TRAIN)
    assert p.ratio == 0.5 and p.lr == pytest.approx(0.05) and p.epochs == 5
    assert p.milestones == pytest.approx((2.0, 4.0))
    tiny = make_plan(Recipe(128, 0.1, 1, (), 0.0, 0), batch_size=16, lr_rule="none", adapt=True, train_size=TRAIN)
    assert tiny.epochs == 1


def test_per_sample_ignores_reference_batch():
    a = plan("per_sample", adapt=False, ref=Recipe(128, 1e-4, 10, (), 0.0, 0), batch=256)
    b = plan("per_sample", adapt=False, ref=Recipe(32, 1e-4, 10, (), 0.0, 0), batch=256)
    c = plan("per_sample", adapt=False, ref=Recipe(0, 1e-4, 10, (), 0.0, 0), batch=256)
    assert a.lr == b.lr == c.lr == pytest.approx(256 * 1e-4)
    assert c.ratio == 1.0 and c.reference.batch_size == 256


def test_given_steps_per_epoch_wins():
    p = plan("none", adapt=False, batch=3000, steps_per_epoch=3)
    assert p.steps_per_epoch == 3 and p.total_steps == 30
    assert plan("none", adapt=False, batch=3000).steps_per_epoch == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_rule": "linear", "ref": Recipe(0, 0.1, 10, (), 0.0, 0)}, "regime.reference_batch_size"),
        ({"lr_rule": "sqrt", "ref": Recipe(0, 0.1, 10, (), 0.0, 0)}, "regime.reference_batch_size"),
        ({"adapt": True, "ref": Recipe(0, 0.1, 10, (), 0.0, 0)}, "regime.reference_batch_size"),
        ({"ref": Recipe(-8, 0.1, 10, (), 0.0, 0)}, "regime.reference_batch_size"),
        ({"batch": 0}, "data.batch_size"),
        ({"batch": -4}, "data.batch_size"),
        ({"batch": 16384}, "fewer than data.batch_size"),
        ({"ref": Recipe(16384, 0.1, 10, (), 0.0, 0)}, "fewer than regime.reference_batch_size"),
        ({"lr_rule": "cubic"}, "regime.lr_rule"),
    ],
)
def test_config_errors(kwargs, match):
    ref = kwargs.pop("ref", REF)
    batch = kwargs.pop("batch", 4096)
    args = {"lr_rule": "none", "adapt": False, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(match)):
        make_plan(ref, batch_size=batch, train_size=TRAIN, **args)


def cfg_overrides(cfg) -> list[str]:
    return [
        f"data.batch_size={cfg.data.batch_size}",
        f"regime.reference_batch_size={cfg.regime.reference_batch_size}",
        f"regime.adapt={str(cfg.regime.adapt).lower()}",
    ]


def test_plan_from_config():
    cfg = load_config(
        None,
        [
            "data.batch_size=4096",
            "regime.reference_batch_size=128",
            "regime.lr_rule=sqrt",
            "regime.adapt=true",
            "optim.lr=0.1",
            "train.epochs=10",
            "train.grad_clip_norm=5",
            "schedule.milestones=[4,8]",
            "schedule.warmup_epochs=1",
        ],
    )
    p = plan_from_config(cfg, train_size=TRAIN)
    assert p.reference == REF
    assert p.lr == pytest.approx(0.1 * math.sqrt(32)) and p.epochs == 320
    assert p.total_steps == p.reference_total_steps == 640 and p.grad_clip_norm == 5.0
    assert p.cross_epoch_batches  # data.cross_epoch_batches is null: on with adapt
    # Another epoch length (the loader's count) changes the epochs, never the updates.
    other = plan_from_config(cfg, train_size=TRAIN, steps_per_epoch=3)
    assert other.total_steps == 640 and other.epochs == 214 and other.milestone_steps == (256, 512)
    off = load_config(None, [*cfg_overrides(cfg), "data.cross_epoch_batches=false"])
    assert not plan_from_config(off, train_size=TRAIN).cross_epoch_batches


def test_plan_from_config_without_reference():
    cfg = load_config(None, ["data.batch_size=256", "optim.lr=0.2", "schedule.milestones=[5]"])
    p = plan_from_config(cfg, train_size=TRAIN)
    assert p.reference.batch_size == 256 and p.ratio == 1.0 and p.lr == 0.2
    assert p.epochs == cfg.train.epochs and p.milestones == (5.0,) and p.total_steps == p.reference_total_steps
    for override in ("regime.lr_rule=linear", "regime.lr_rule=sqrt", "regime.adapt=true"):
        bad = load_config(None, ["data.batch_size=256", override])
        with pytest.raises(ConfigError, match=re.escape("regime.reference_batch_size")):
            plan_from_config(bad, train_size=TRAIN)


def test_plan_schedule_drops_at_scaled_milestone():
    p = plan("sqrt", adapt=True)
    cfg = ScheduleConfig(name="step", milestones=[4, 8], gamma=0.1, warmup_epochs=1, warmup_start_factor=0.5)
    schedule = p.schedule(cfg)
    assert isinstance(schedule, Schedule)
    assert schedule.total_steps == 640 and schedule.warmup_steps == 64 and schedule.milestone_steps == (256, 512)
    assert schedule(0) == 0.5 and schedule(64) == 1.0
    assert schedule(255) == 1.0 and schedule(256) == pytest.approx(0.1) and schedule(512) == pytest.approx(0.01)
    # The same as what the reference recipe's schedule gives at the same update count.
    reference = Schedule.from_config(cfg, steps_per_epoch=64, epochs=10)
    assert all(schedule(s) == pytest.approx(reference(s)) for s in range(0, 640, 7))


def test_plan_schedule_without_adapt_uses_reference_epochs():
    p = plan("linear", adapt=False)
    schedule = p.schedule(ScheduleConfig(name="cosine", min_lr_factor=0.1))
    assert schedule.name == "cosine" and schedule.total_steps == 20
    assert schedule.milestone_steps == (8, 16) and schedule.warmup_steps == 2
    assert schedule(20) == pytest.approx(0.1)


def test_format_plan_shows_key_numbers():
    p = make_plan(
        Recipe(128, 0.1, 100, (81.0, 122.0, 164.0), 0.0, 0),
        batch_size=4096,
        lr_rule="sqrt",
        adapt=True,
        train_size=50_000,
        grad_clip_norm=5.0,
    )
    text = format_plan(p)
    lines = text.splitlines()
    assert "reference" in lines[0] and "this run" in lines[0]
    for needle in ("128", "4096", "×32", "rule sqrt", "0.1000", "0.5657", "100", "3250", "regime adaptation"):
        assert needle in text, needle
    for needle in ("81, 122, 164", "31590, 47580, 63960", "390", "12", "39000", "warm-up", "grad clip"):
        assert needle in text, needle
    updates = next(line for line in lines if line.startswith("total updates"))
    assert updates.split()[2:] == ["39000", "39000", "(×1.00)"]
    clip = next(line for line in lines if line.startswith("grad clip"))
    assert clip.split()[-1] == "5"
    # The notes start in the same column on every row that has one.
    widths = {len(line.split("   (")[0]) for line in lines if "   (" in line}
    assert len(widths) == 1


def test_format_plan_per_sample_and_off_clip():
    text = format_plan(plan("per_sample", adapt=False, ref=Recipe(128, 1e-4, 10, (), 0.0, 0), batch=64))
    assert "rule per_sample" in text and "0.0064" in text and "per sample" in text
    assert "off" in text and "(×0.5)" in text


# --- regime adaptation in updates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("train_size", "batch", "reference_batch"),
    [
        (8192, 4096, 128),  # divides: 64 reference steps per epoch, 2 large ones
        (8000, 4096, 128),  # the MNIST split: 62 reference steps, 1.95 large batches per epoch
        (60_000, 2048, 128),  # Fashion-MNIST: 468 and 29.3
        (50_000, 4096, 256),  # CIFAR: 195 and 12.2
        (1000, 96, 32),  # 31 and 10.4
    ],
)
@pytest.mark.parametrize("across", [None, False, True])
def test_adapt_matches_the_reference_updates_milestones_and_warmup(train_size, batch, reference_batch, across):
    ref = Recipe(reference_batch, 0.1, 7, (2.0, 4.5, 6.0), 0.5, 0)
    p = make_plan(ref, batch, "sqrt", adapt=True, train_size=train_size, cross_epoch_batches=across)
    ref_spe = train_size // reference_batch
    assert p.reference_steps_per_epoch == ref_spe
    assert p.total_steps == p.reference_total_steps == 7 * ref_spe
    assert p.milestone_steps == p.reference_milestone_steps == tuple(round(m * ref_spe) for m in ref.milestones)
    assert p.warmup_total_steps == p.reference_warmup_total_steps == round(0.5 * ref_spe)
    assert p.cross_epoch_batches is (across is not False)  # on by default with adapt
    # Enough epochs for every update; the last one may be partial, never empty.
    assert (p.epochs - 1) * p.steps_per_epoch < p.total_steps <= p.epochs * p.steps_per_epoch
    # The schedule drops at the reference's steps.
    schedule = p.schedule(ScheduleConfig(name="step", milestones=list(ref.milestones)))
    reference = Schedule.from_config(
        ScheduleConfig(name="step", milestones=list(ref.milestones), warmup_epochs=0.5), ref_spe, 7
    )
    assert all(schedule(s) == pytest.approx(reference(s)) for s in range(p.total_steps))
    updates = next(line for line in format_plan(p).splitlines() if line.startswith("total updates"))
    assert updates.endswith("(×1.00)"), updates


def test_mnist_plan_no_longer_loses_half_the_updates():
    """8,000 images at batch 4,096: one drop-last step per epoch, so epochs × 32 made 1,280 of 2,480 updates."""
    cfg = load_config(REPO / "configs" / "mnist_f1_lb_lr_gbn_ra.yaml")
    p = plan_from_config(cfg, train_size=8000)
    assert p.reference_total_steps == p.total_steps == 2480
    assert p.milestone_steps == (620, 1240, 1860) and p.steps_per_epoch == 2 and p.epochs == 1240
    text = format_plan(p)
    assert "(×1.00)" in text and "batches across epochs" in text
    share = next(line for line in text.splitlines() if line.startswith("share of each epoch used"))
    assert share.split()[5:8] == ["99.2", "%", "100"]  # 62 × 128 of 8,000; all of it


def test_share_of_each_epoch_used_without_cross_epoch_batches():
    p = make_plan(REF, 4096, "none", adapt=True, train_size=8000, cross_epoch_batches=False)
    assert p.steps_per_epoch == 1 and p.epoch_share_used == pytest.approx(4096 / 8000)
    assert p.total_steps == p.reference_total_steps == 620 and p.epochs == 620
    assert "51.2 %" in format_plan(p) and "incomplete last batch dropped" in format_plan(p)
    assert make_plan(REF, 4096, "none", adapt=False, train_size=8000).epoch_share_used == pytest.approx(0.512)


# --- gradual warm-up ------------------------------------------------------------------------------


def test_gradual_warmup_from_the_reference_lr():
    ref = Recipe(128, 0.1, 10, (6.0, 8.0), 0.0, 0)
    p = make_plan(ref, 2048, "sqrt", adapt=False, train_size=60_000, warmup_epochs=2)
    assert p.lr == pytest.approx(0.4) and p.steps_per_epoch == 29
    assert p.gradual_warmup_epochs == 2 and p.warmup_total_steps == 58 and p.warmup_epochs == 2
    assert p.warmup_start_factor == pytest.approx(0.25)
    schedule = p.schedule(ScheduleConfig(name="step", milestones=[6, 8], warmup_start_factor=0.0))
    assert schedule(0) * p.lr == pytest.approx(0.1)  # starts at the reference's lr
    assert schedule(29) * p.lr == pytest.approx(0.25)
    assert schedule(58) == 1.0 and schedule(174) == pytest.approx(0.1)
    text = format_plan(p)
    row = next(line for line in text.splitlines() if line.startswith("warm-up steps"))
    assert row.split()[2:4] == ["0", "58"] and "gradual" in row and "regime.warmup_epochs" in row
    # Off (the authors' recipe): no warm-up, the recipe's own start factor.
    off = make_plan(ref, 2048, "sqrt", adapt=False, train_size=60_000)
    assert off.warmup_total_steps == 0 and off.warmup_start_factor is None and "gradual" not in format_plan(off)


def test_gradual_warmup_under_adapt_counts_reference_epochs_and_replaces_the_recipes():
    ref = Recipe(128, 0.1, 10, (6.0, 8.0), 0.0, warmup_steps=30)
    p = make_plan(ref, 2048, "sqrt", adapt=True, train_size=60_000, warmup_epochs=2)
    assert p.warmup_total_steps == 2 * 468 and p.reference_warmup_total_steps == 30
    with pytest.raises(ConfigError, match=re.escape("regime.warmup_epochs")):
        make_plan(ref, 2048, "sqrt", adapt=True, train_size=60_000, warmup_epochs=-1)


def test_warmup_switch_from_the_config():
    cfg = load_config(REPO / "configs" / "fashion_mnist_f1_lb_lr.yaml", ["regime.warmup_epochs=2"])
    p = plan_from_config(cfg, train_size=60_000)
    assert p.warmup_total_steps == 58 and p.warmup_start_factor == pytest.approx(0.25)
