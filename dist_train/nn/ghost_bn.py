"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017), as one vectorised op.

Method card
-----------
*Paper.* Large batches generalize worse partly because batch-norm statistics
over a huge batch are too clean. Ghost BN computes the statistics over small
"ghost" batches (e.g. 16-128 samples) inside the large batch, in training only;
inference uses the running statistics exactly like BatchNorm.

*Code.* Training output and gradients equal plain BN applied to each ghost chunk
separately, but nothing loops over chunks: per-sample statistics come from one
reduction, ghost statistics from an ``index_add`` over a sample→ghost index, and
the output is one fused affine op. The backward is written by hand so only the
input and per-ghost statistics are kept (memory close to BatchNorm's). Eval mode
is ``F.batch_norm`` with the running statistics. Modules subclass BatchNorm, so
parameters, buffers and state_dict keys are BatchNorm's: checkpoints move both ways.

*Precision.* Per-sample moments come from two one-pass float32 reductions
(sum and norm), so a per-sample variance is E[x²] - E[x]²: exact enough while a
channel's mean inside one sample stays below ~100× its spread there (BN inputs
are far from that); ghost variances combine them two-pass. bf16 input is
computed in float32 and rounded once, like BatchNorm.

*Ghosts.* Samples ``[0, g)``, ``[g, 2g)``, ... form ghosts of ``g = ghost_batch_size``.
A remainder is its own smaller ghost; a remainder of one sample joins the
previous ghost (a single sample has no variance). A batch smaller than ``g`` is
one ghost. A training batch of one sample is an error.

*Running statistics.* One update per forward, with the module's momentum, from
the mean of the ghost means and the mean of the ghost unbiased variances:
``running = (1 - momentum) · running + momentum · stat``; ``momentum=None`` gives
the cumulative average over forwards (as BatchNorm), which BN recalibration uses.

*Under DDP.* Each rank normalises its own ghosts. DDP must not overwrite the
buffers with rank 0's (``sync_buffers`` off); :func:`averaged_bn_buffers`
evaluates and saves with their mean across ranks, then gives each rank its own back,
so neither evaluation nor checkpointing changes what is trained.

*Switch.* ``bn.ghost_batch_size`` (0 = plain BN); :func:`convert_to_ghost_bn`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dist_train.errors import DistTrainError


class GhostBatchError(DistTrainError, ValueError):
    """A batch that Ghost BN cannot normalise (e.g. one sample in training)."""


@lru_cache(maxsize=64)
def _ghost_layout(batch: int, ghost_batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample→ghost index (batch,) and samples per ghost (ghosts,), for a batch of ``batch``."""
    ghosts = max(1, batch // ghost_batch_size)
    remainder = batch - ghosts * ghost_batch_size
    index = torch.arange(batch, device=device) // ghost_batch_size
    if remainder > 1:
        ghosts += 1
    else:  # a remainder of 0 or 1 samples belongs to the last full ghost
        index.clamp_(max=ghosts - 1)
    counts = torch.bincount(index, minlength=ghosts)
    return index, counts


def _per_ghost(values: torch.Tensor, index: torch.Tensor, ghosts: int) -> torch.Tensor:
    """Sum (batch, C) per-sample values into (ghosts, C)."""
    return values.new_zeros(ghosts, values.shape[1]).index_add_(0, index, values)


def _sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_l a[n, c, l] · b[n, c, l] as (N, C); a batched matmul when possible (no product tensor)."""
    if a.dtype == b.dtype and a.stride(2) == 1 and b.stride(2) == 1:
        return torch.einsum("ncl,ncl->nc", a, b)
    return (a * b).sum(dim=2)  # channels_last or mixed precision: the matmul would copy its inputs


def _per_sample(index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-ghost (G, C) values broadcast to the samples as (N, C, 1)."""
    return values[index].unsqueeze(2)


class _GhostBatchNormFunction(torch.autograd.Function):
    """Normalise (N, C, L) input per ghost and channel; backward by hand.

    Statistics and arithmetic run in float32 (float64 for float64 input); a bf16/fp16
    input is read as is and its output rounded once, as BatchNorm's kernels do.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, index, counts, eps):  # type: ignore[override]
        ghosts, spatial = counts.numel(), x.shape[2]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        # Per-sample moments: one pass each over the input, in any memory layout.
        sample_mean = x.sum(dim=2, dtype=acc) / spatial
        sample_sq = torch.linalg.vector_norm(x, dim=2, dtype=acc).square_() / spatial
        sample_var = (sample_sq - sample_mean.square()).clamp_(min=0)
        # Ghost moments from the per-sample ones (law of total variance, two-pass on (N, C)).
        per_ghost = counts.to(acc).unsqueeze(1)
        mean = _per_ghost(sample_mean, index, ghosts) / per_ghost
        spread = (sample_mean - mean[index]).square_()
        var = _per_ghost(sample_var + spread, index, ghosts) / per_ghost  # biased
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight.to(acc)
        shift = bias.to(acc) - mean * scale
        y = torch.addcmul(_per_sample(index, shift), x, _per_sample(index, scale)).to(x.dtype)
        ctx.save_for_backward(x, weight, index, counts, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        ctx.spatial = spatial
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):  # type: ignore[override]
        x, weight, index, counts, mean, invstd = ctx.saved_tensors
        ghosts, acc = counts.numel(), mean.dtype
        centered = x - _per_sample(index, mean)  # in acc precision; becomes grad_x below
        sum_dy = _per_ghost(grad_y.sum(dim=2, dtype=acc), index, ghosts)
        sum_dy_xhat = invstd * _per_ghost(_sample_dot(grad_y, centered).to(acc), index, ghosts)
        n = (counts.to(acc) * ctx.spatial).unsqueeze(1)
        # dx = w·invstd·(dy - mean(dy) - x̂·mean(dy·x̂)) = a·dy + b·(x - μ) + c, per ghost and channel
        a = weight.to(acc) * invstd
        b = -a * invstd * sum_dy_xhat / n
        c = -a * sum_dy / n
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(_per_sample(index, c), centered, _per_sample(index, b), out=centered)
            grad_x = grad_x.addcmul_(grad_y, _per_sample(index, a)).to(x.dtype)
        grad_weight = sum_dy_xhat.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None


class _GhostBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics come from ghost batches of ``ghost_batch_size`` samples."""

    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if ghost_batch_size < 2:
            raise GhostBatchError(f"ghost_batch_size must be at least 2, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        batch = x.shape[0]
        if batch < 2:
            raise GhostBatchError(f"{type(self).__name__}: a training batch of {batch} sample has no batch statistics")
        index, counts = _ghost_layout(batch, self.ghost_batch_size, x.device)
        weight = self.weight if self.weight is not None else x.new_ones(self.num_features, dtype=torch.float32)
        bias = self.bias if self.bias is not None else x.new_zeros(self.num_features, dtype=torch.float32)
        flat = x.reshape(batch, self.num_features, -1) if x.dim() != 3 else x
        y, mean, var = _GhostBatchNormFunction.apply(flat, weight, bias, index, counts, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, counts * flat.shape[2])
        return y.view_as(x) if x.dim() != 3 else y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, values_per_ghost: torch.Tensor) -> None:
        n = values_per_ghost.to(var.dtype).unsqueeze(1)
        unbiased = var * n / (n - 1).clamp(min=1)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.mean(0).to(self.running_var.dtype), factor)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost BN for (N, C) or (N, C, L) input; a drop-in for nn.BatchNorm1d."""

    _check_input_dim = nn.BatchNorm1d._check_input_dim


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost BN for (N, C, H, W) input; a drop-in for nn.BatchNorm2d."""

    _check_input_dim = nn.BatchNorm2d._check_input_dim


class GhostBatchNorm3d(_GhostBatchNorm):
    """Ghost BN for (N, C, D, H, W) input; a drop-in for nn.BatchNorm3d."""

    _check_input_dim = nn.BatchNorm3d._check_input_dim


_GHOST_OF = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d, nn.BatchNorm3d: GhostBatchNorm3d}


def _to_ghost(module: _BatchNorm, ghost_batch_size: int) -> _GhostBatchNorm:
    ghost = _GHOST_OF[type(module)](
        module.num_features, ghost_batch_size, module.eps, module.momentum, module.affine, module.track_running_stats
    )
    # Share the very same Parameter and buffer objects: optimizers and hooks keep working.
    ghost._parameters = module._parameters
    ghost._buffers = module._buffers
    ghost.training = module.training
    return ghost


def convert_to_ghost_bn(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Swap every BatchNorm1d/2d/3d of ``model`` for its Ghost twin, in place; returns ``model``.

    Idempotent: Ghost modules already there get the new ghost size. Parameters,
    buffers and state_dict keys are unchanged.
    """
    if ghost_batch_size < 2:
        raise GhostBatchError(f"ghost_batch_size must be at least 2, got {ghost_batch_size}")
    if isinstance(model, _GhostBatchNorm):
        model.ghost_batch_size = ghost_batch_size
        return model
    for name, child in model.named_children():
        if isinstance(child, _GhostBatchNorm):
            child.ghost_batch_size = ghost_batch_size
        elif type(child) in _GHOST_OF:
            setattr(model, name, _to_ghost(child, ghost_batch_size))
        else:
            convert_to_ghost_bn(child, ghost_batch_size)
    return model


def has_ghost_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _GhostBatchNorm) for m in model.modules())


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
