"""BatchNorm running statistics across ranks: read them, average them, evaluate or save with their mean.

Each rank's BatchNorm layers (plain or Ghost) may hold statistics of their own (Ghost BN's per-rank ghosts, or
DDP without ``dist.sync_buffers``). Evaluation and checkpoints use their mean over the ranks; training keeps
each rank's own (:func:`averaged_bn_buffers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_running_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm running mean/var of ``model`` by its state_dict key (the live tensors)."""
    return {
        f"{name}.{kind}" if name else kind: buf
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
        for kind, buf in (("running_mean", module.running_mean), ("running_var", module.running_var))
        if buf is not None
    }


@torch.no_grad()
def average_bn_buffers(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Average every BatchNorm running mean/var over the ranks of ``group`` in place (one all-reduce)."""
    if not dist.is_initialized():
        return
    buffers = list(bn_running_buffers(model).values())
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for buf in buffers:
        buf.copy_(flat[offset : offset + buf.numel()].view_as(buf))
        offset += buf.numel()


@contextmanager
def averaged_bn_buffers(model: nn.Module, group: dist.ProcessGroup | None = None) -> Iterator[None]:
    """Inside the block, the BN running statistics are their mean over ``group``; afterwards each
    rank's own again, so evaluating or saving never changes what is trained (a collective)."""
    own = {key: buf.clone() for key, buf in bn_running_buffers(model).items()}
    average_bn_buffers(model, group)
    try:
        yield
    finally:
        with torch.no_grad():
            for key, buf in bn_running_buffers(model).items():
                buf.copy_(own[key])
