"""Optimizers, and the scheduler that drives their lr by a :class:`~dist_train.schedules.Schedule`."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dist_train.config import OptimConfig
from dist_train.optimizers import OPTIMIZERS
from dist_train.schedules import Schedule

__all__ = ["Schedule", "build_optimizer", "build_scheduler", "parameter_groups"]

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
    return OPTIMIZERS[cfg.name].build(groups, cfg.lr if lr is None else lr, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> LambdaLR:
    """A scheduler stepped once per optimizer step; its state is just the step count."""
    return LambdaLR(optimizer, lr_lambda=lambda step: schedule(step))
