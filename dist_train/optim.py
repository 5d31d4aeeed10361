"""Optimizers and per-step learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dist_train.config import OptimConfig, ScheduleConfig

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(model: nn.Module, weight_decay: float, decay_bn_and_bias: bool) -> list[dict]:
    """One group with weight decay and, unless ``decay_bn_and_bias``, one without for norms and biases."""
    if decay_bn_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = isinstance(module, _NORM_LAYERS) or name == "bias"
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimizer; ``lr`` (e.g. a regime plan's) replaces ``cfg.lr`` when given."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_bn_and_bias)
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


@dataclass(frozen=True)
class Schedule:
    """The lr multiplier as a pure function of the optimizer step."""

    name: str
    total_steps: int
    warmup_steps: int
    milestone_steps: tuple[int, ...]
    gamma: float
    warmup_start_factor: float
    min_lr_factor: float
    factors: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> Schedule:
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * steps_per_epoch)
        return cls(
            name=cfg.name,
            total_steps=steps_per_epoch * epochs,
            warmup_steps=warmup,
            milestone_steps=tuple(round(m * steps_per_epoch) for m in cfg.milestones),
            gamma=cfg.gamma,
            warmup_start_factor=cfg.warmup_start_factor,
            min_lr_factor=cfg.min_lr_factor,
            factors=tuple(cfg.factors),
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        if self.name == "step":
            passed = sum(step >= m for m in self.milestone_steps)
            if self.factors:
                return self.factors[passed - 1] if passed else 1.0
            return self.gamma**passed
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> LambdaLR:
    """A scheduler stepped once per optimizer step; its state is just the step count."""
    return LambdaLR(optimizer, lr_lambda=lambda step: schedule(step))
