"""The reference-recipe → run plan: lr rules, regime adaptation, schedules and the table."""

import math
import re

import pytest

from dist_train.config import ScheduleConfig, load_config
from dist_train.errors import ConfigError
from dist_train.optim import Schedule
from dist_train.regime import Plan, Recipe, format_plan, make_plan, plan_from_config

REF = Recipe(batch_size=128, lr=0.1, epochs=10, milestones=(4.0, 8.0), warmup_epochs=1.0, warmup_steps=0)
TRAIN = 8192  # divisible by 128 and 4096: 64 vs 2 steps per epoch


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
    assert plan_from_config(cfg, train_size=TRAIN, steps_per_epoch=3).total_steps == 960


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
    for needle in ("128", "4096", "×32", "rule sqrt", "0.1000", "0.5657", "100", "3200", "regime adaptation"):
        assert needle in text, needle
    for needle in ("81, 122, 164", "2592, 3904, 5248", "390", "12", "39000", "38400", "warm-up", "grad clip"):
        assert needle in text, needle
    clip = next(line for line in lines if line.startswith("grad clip"))
    assert clip.split()[-1] == "5"
    # The notes start in the same column on every row that has one.
    widths = {len(line.split("   (")[0]) for line in lines if "   (" in line}
    assert len(widths) == 1


def test_format_plan_per_sample_and_off_clip():
    text = format_plan(plan("per_sample", adapt=False, ref=Recipe(128, 1e-4, 10, (), 0.0, 0), batch=64))
    assert "rule per_sample" in text and "0.0064" in text and "per sample" in text
    assert "off" in text and "(×0.5)" in text
