"""Optimizer parameter groups and the per-step lr schedule."""

import math

import pytest
import torch
from torch import nn

from dist_train.config import OptimConfig, ScheduleConfig
from dist_train.optim import Schedule, build_optimizer, build_scheduler


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_weight_decay_can_exclude_bn_and_bias():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, decay_bn_and_bias=False))
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(exempt["params"]) == 4  # conv bias, bn weight, bn bias, linear bias
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1


def test_sgd_and_adamw_settings():
    sgd = build_optimizer(small_model(), OptimConfig(nesterov=True, momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(small_model(), OptimConfig(name="adamw", lr=1e-3, betas=[0.8, 0.9]))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)


def test_step_schedule_with_warmup():
    cfg = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1, warmup_epochs=1)
    schedule = Schedule.from_config(cfg, steps_per_epoch=10, epochs=5)
    assert schedule(0) == 0.0 and schedule(5) == pytest.approx(0.5)
    assert schedule(10) == 1.0 and schedule(19) == 1.0
    assert schedule(20) == pytest.approx(0.1) and schedule(40) == pytest.approx(0.01)


def test_cosine_schedule_reaches_floor():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_factor=0.1)
    schedule = Schedule.from_config(cfg, steps_per_epoch=10, epochs=11)
    assert schedule(10) == 1.0
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule(110) == pytest.approx(0.1)


def test_scheduler_drives_optimizer_lr():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(lr=0.4))
    scheduler = build_scheduler(opt, Schedule.from_config(ScheduleConfig(warmup_steps=4), 10, 1))
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_step_schedule_with_explicit_factors():
    cfg = ScheduleConfig(name="step", milestones=[60, 120, 140], factors=[0.2, 0.04, 0.001])
    schedule = Schedule.from_config(cfg, steps_per_epoch=1, epochs=160)
    assert [schedule(s) for s in (0, 59, 60, 120, 140, 159)] == pytest.approx([1, 1, 0.2, 0.04, 0.001, 0.001])
