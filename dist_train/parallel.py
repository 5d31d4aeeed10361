"""The model as it is trained: DDP across the ranks (buffer policy, fixed bucket layout), then torch.compile.

**Buffers.** DDP copies rank 0's buffers to every rank before each forward when ``dist.sync_buffers`` is on.
A model with Ghost BN keeps per-rank statistics (each rank's ghost batches), which DDP must not overwrite; the
ranks' statistics are averaged for evaluation and checkpoints instead (:mod:`dist_train.nn.bn_buffers`).

**Gradient buckets laid out the same in every process**, so that a resumed run sums exactly as an
uninterrupted one. DDP reduces gradients in buckets. A fresh DDP starts with one bucket holding every
parameter, and after its first backward rebuilds the buckets in the order the gradients became ready (a 1 MB
first bucket, then 25 MB ones). Ring all-reduces (gloo, NCCL) split a buffer into one chunk per rank and sum
each chunk starting from a different rank, so with three or more ranks the order in which an element's
partial sums are added depends on where the element sits in its bucket. The first step after a resume
therefore summed in another order than the same step of an uninterrupted run (whose buckets were rebuilt long
before), and the weights drifted apart in the last bits. With two ranks every element is ``a + b``, which is
commutative, so the layout never mattered there.

:func:`fix_bucket_layout` gives DDP the parameters in their registration order (reversed, as DDP does for
its first buckets) before the first forward, the order its rebuild would otherwise take from the first
backward. DDP then builds its buckets once, from that order and with its usual sizes, before the first step,
and keeps them: every process, fresh or long-running, reduces every step with the same layout, and a resume is
bitwise exact at any world size. The reduction itself is DDP's own (a few large bucketed all-reduces
overlapped with the backward pass); only the bucket order follows the model's definition instead of the
measured gradient order, DDP's own assumption for its first step.

**Each rank keeps its own buffers when DDP is built.** DDP's constructor copies rank 0's parameters and
buffers to every rank. The trainer builds it at the first training step, after a resume has restored each
rank's own BN statistics: rank 0's would replace them, and an evaluation before the next forward (a resume
from a checkpoint taken at an epoch's last step) would average other statistics than the uninterrupted run.
:func:`parallelize` puts each rank's buffers back after the constructor (the parameters are equal anyway).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_train.config import Config
from dist_train.distributed import DistContext
from dist_train.nn.ghost_bn import has_ghost_bn


def ddp_buffer_sync(sync: bool) -> dict[str, bool]:
    """DDP's switch for copying rank 0's buffers each forward (renamed in newer torch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def fix_bucket_layout(model: DistributedDataParallel) -> bool:
    """Make ``model``'s gradient buckets the same in every process from its first step on (call before it);
    False where this torch's reducer cannot (DDP's own layout then stays)."""
    # The call DDP's own Join hook makes for the same purpose: the rebuild at the first forward then takes
    # every parameter, in index order, instead of the order the first backward would record.
    push = getattr(model.reducer, "_push_all_rebuilt_params", None)
    if push is None:
        return False
    push()
    return True


def parallelize(model: nn.Module, cfg: Config, ctx: DistContext, warn: Callable[[str], None] = print) -> nn.Module:
    """``model`` as trained: DDP across the ranks of ``ctx`` (when there are several), then torch.compile if
    ``train.compile``. DDP's constructor is a collective: every rank must call this at the same point."""
    wrapped: nn.Module = model
    if ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        sync = cfg.dist.sync_buffers and not has_ghost_bn(model)  # per-rank ghost statistics stay per rank
        own = [buffer.detach().clone() for buffer in model.buffers()]
        wrapped = DistributedDataParallel(
            model, device_ids=device_ids, process_group=ctx.group, **ddp_buffer_sync(sync)
        )
        with torch.no_grad():  # the constructor broadcast rank 0's buffers over this rank's own
            for buffer, kept in zip(model.buffers(), own, strict=True):
                buffer.copy_(kept)
        if cfg.dist.exact_reduction and not fix_bucket_layout(wrapped):
            warn(
                f"warning: torch {torch.__version__} cannot fix DDP's bucket layout (dist.exact_reduction): "
                "with 3 or more ranks a resumed run may differ from an uninterrupted one in the last bits"
            )
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped
