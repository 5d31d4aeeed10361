"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017), at about BatchNorm's cost in time and memory.

Method card
-----------
*Paper.* Large batches generalize worse partly because batch-norm statistics
over a huge batch are too clean. Ghost BN computes the statistics over small
"ghost" batches (e.g. 16-128 samples) inside the large batch, in training only;
inference uses the running statistics exactly like BatchNorm.

*Code.* Training output and gradients equal plain BN applied to each ghost chunk
separately, with no split, cat or gathering of gradient chunks. Three implementations, chosen per call:

* CPU (eager): ATen's own batch-norm kernels on each ghost, as ``out=`` calls that read a slice of the
  input and write the same slice of one output buffer (a ghost is a slice along dim 0, dense in both
  contiguous and channels_last layouts); the backward likewise per ghost. Each ghost's output and
  gradients are bit for bit ``F.batch_norm`` on that chunk.
* Other devices (CUDA, eager): one vectorised autograd Function for all ghosts (a few large kernels,
  not a few per ghost): per-sample sums, ghost statistics by ``index_add`` over a sample→ghost index,
  one fused affine op; backward by hand, keeping only the input and per-ghost statistics.
* Under ``torch.compile``: plain differentiable ops, traced into one graph without breaks (autograd
  derives the backward, inductor fuses it).

Measured on CPU (2 shared cores under load 5-10: best-of-N, interleaved, so ratios only), forward+backward
of (256, 64, 32, 32) fp32 at ghost 16, time relative to BatchNorm2d, contiguous / channels_last, one thread:
per-ghost ATen kernels 1.00× / 1.12×; the vectorised Function made two-pass 1.33× / 1.54×; the former
one-pass Function 1.61× / 1.69×; the chunk loop (split, F.batch_norm, cat) 1.22× / 1.26×. The per-ghost
kernels won. Two threads on the loaded machine: 0.92-1.20× BN with ``OMP_WAIT_POLICY=PASSIVE``, but
1.8-4.0× with OpenMP's default spinning barriers (many short parallel regions, where BN has a few long ones).
Peak memory (CPU allocator, input and grad_output excluded): BatchNorm2d 3× the input's size, per-ghost
kernels 2 + 2·(largest ghost)/batch (the backward's ``out=`` overload computes into a temporary and copies;
one ghost calls BatchNorm's backward as is): at most BatchNorm's unless one of two ghosts holds over half the
batch (1.2× BatchNorm's past 80%, e.g. batch 34 at ghost 32: 1.3×).
Eval mode is ``F.batch_norm`` with the running statistics. Modules subclass BatchNorm, so parameters,
buffers and state_dict keys are BatchNorm's: checkpoints move both ways.

*Precision.* As BatchNorm's: statistics are two-pass (the mean first, then the variance from the
centred values), so a channel whose mean is ~1000× its spread keeps its variance (a one-pass
E[x²] - E[x]² in float32 cancels there). Arithmetic in float32 (float64 for float64 input); bf16/fp16
input is read as is, with float32 statistics, and its output rounded once, like BatchNorm.

*Ghosts.* Samples ``[0, g)``, ``[g, 2g)``, ... form ghosts of ``g = ghost_batch_size``.
A remainder is its own smaller ghost; a remainder of one sample joins the
previous ghost (a single sample has no variance). A batch smaller than ``g`` is
one ghost. A training batch of one sample is an error.

*Running statistics.* One update per forward, with the module's momentum, from
the mean of the ghost means and the mean of the ghost unbiased variances:
``running = (1 - momentum) · running + momentum · stat``; ``momentum=None`` gives
the cumulative average over forwards (as BatchNorm), which BN recalibration uses.

*Under DDP.* Each rank normalises its own ghosts. DDP must not overwrite the
buffers with rank 0's (``sync_buffers`` off); :func:`~dist_train.nn.bn_buffers.averaged_bn_buffers`
evaluates and saves with their mean across ranks, then gives each rank its own back,
so neither evaluation nor checkpointing changes what is trained.

*Switch.* ``bn.ghost_batch_size`` (0 = plain BN); :func:`convert_to_ghost_bn`.
"""

from __future__ import annotations

from functools import lru_cache

import torch
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


def _ghost_sizes(batch: int, ghost_batch_size: int) -> list[int]:
    """Samples per ghost, as plain ints (the same layout as :func:`_ghost_layout`)."""
    ghosts, remainder = divmod(batch, ghost_batch_size)
    if ghosts == 0:
        return [batch]
    sizes = [ghost_batch_size] * ghosts
    if remainder > 1:
        sizes.append(remainder)
    else:
        sizes[-1] += remainder
    return sizes


def _dense_format(x: torch.Tensor) -> torch.memory_format | None:
    """The memory format ``x`` is dense in (contiguous or channels_last/_3d), None for any other strides."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


_aten = torch.ops.aten


class _GhostBatchNormChunks(torch.autograd.Function):
    """CPU: ATen's own batch-norm kernels on each ghost, writing into one output (and one grad_input) buffer.

    A ghost is a slice along dim 0, which is dense in both contiguous and channels_last layouts, so every
    call reads and writes in place: no split, no cat, no gathering of gradient chunks. Each ghost gets
    exactly what ``F.batch_norm`` gives that chunk (two-pass statistics, fused backward), bit for bit.
    ``x`` must be dense (see :func:`_dense_format`); ``weight`` is never None and sets the statistics'
    dtype as in ATen (float32 for bf16/fp16 input with float32 parameters, else the input's dtype).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, sizes, eps):  # type: ignore[override]
        ghosts, channels = len(sizes), x.shape[1]
        y = torch.empty_like(x)
        stats = x.new_empty((4, ghosts, channels), dtype=weight.dtype)
        save_mean, save_invstd = stats[0], stats[1]
        # momentum 1 on zeroed per-ghost "running" buffers: ATen writes each ghost's mean and unbiased variance
        ghost_mean, ghost_var = stats[2].zero_(), stats[3].zero_()
        start = 0
        for i, size in enumerate(sizes):
            end = start + size
            _aten.native_batch_norm.out(
                x[start:end], weight, bias, ghost_mean[i], ghost_var[i], True, 1.0, eps,
                out=y[start:end], save_mean=save_mean[i], save_invstd=save_invstd[i],
            )  # fmt: skip
            start = end
        ctx.save_for_backward(x, weight, save_mean, save_invstd)
        ctx.sizes, ctx.eps = sizes, eps
        ctx.mark_non_differentiable(ghost_mean, ghost_var)
        return y, ghost_mean, ghost_var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):  # type: ignore[override]
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=_dense_format(x))  # a no-op when autograd hands x's layout
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w, need_b]
        if len(ctx.sizes) == 1:  # one ghost: BatchNorm's backward as is (the out= overload copies its result)
            args = (grad_y, x, weight, None, None, save_mean[0], save_invstd[0], True, ctx.eps, mask)
            return *_aten.native_batch_norm_backward(*args), None, None
        grad_x = torch.empty_like(x) if need_x else None
        grad_wb = weight.new_zeros((2, len(ctx.sizes), weight.numel()))
        start = 0
        for i, size in enumerate(ctx.sizes):
            end = start + size
            args = (grad_y[start:end], x[start:end], weight, None, None, save_mean[i], save_invstd[i], True, ctx.eps)
            if need_x:
                # The out= overload takes all three outputs (weight/bias gradients are by-products of the kernel);
                # it computes into a new tensor and copies: one extra pass, and 2/G of x's size at the peak.
                _aten.native_batch_norm_backward.out(
                    *args, [True, True, True], out0=grad_x[start:end], out1=grad_wb[0, i], out2=grad_wb[1, i]
                )
            else:
                _, grad_w_i, grad_b_i = _aten.native_batch_norm_backward(*args, mask)
                for j, grad in enumerate((grad_w_i, grad_b_i)):
                    if grad is not None:
                        grad_wb[j, i] = grad
            start = end
        grad_w, grad_b = grad_wb.sum(1)
        return grad_x, grad_w if need_w else None, grad_b if need_b else None, None, None


def _per_ghost(values: torch.Tensor, index: torch.Tensor, ghosts: int) -> torch.Tensor:
    """Sum (batch, C) per-sample values into (ghosts, C)."""
    return values.new_zeros(ghosts, values.shape[1]).index_add_(0, index, values)


def _per_sample(index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-ghost (G, C) values broadcast to the samples as (N, C, 1)."""
    return values[index].unsqueeze(2)


class _GhostBatchNormVectorised(torch.autograd.Function):
    """Other devices (CUDA): all ghosts at once on (N, C, L) input in any layout; backward by hand.

    A few large kernels instead of a few per ghost. Two-pass statistics: ghost means from per-sample
    sums, then the variance from the centred values, which are computed into the output buffer (no
    extra memory); the backward centres again. Arithmetic in float32 (float64 for float64 input); a
    bf16/fp16 input is read as is and its output rounded once, as BatchNorm's kernels do.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, index, counts, eps):  # type: ignore[override]
        ghosts = counts.numel()
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = (counts.to(acc) * x.shape[2]).unsqueeze(1)
        mean = _per_ghost(x.sum(dim=2, dtype=acc), index, ghosts) / n
        buf = torch.sub(x, _per_sample(index, mean))  # x's layout, acc dtype (type promotion)
        var = _per_ghost(buf.square_().sum(dim=2), index, ghosts) / n  # biased
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight.to(acc)
        shift = bias.to(acc) - mean * scale
        y = torch.addcmul(_per_sample(index, shift), x, _per_sample(index, scale), out=buf).to(x.dtype)
        unbiased = var * n / (n - 1)
        ctx.save_for_backward(x, weight, index, counts, mean, invstd)
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):  # type: ignore[override]
        x, weight, index, counts, mean, invstd = ctx.saved_tensors
        ghosts, acc = counts.numel(), mean.dtype
        mean_s = _per_sample(index, mean)
        buf = torch.sub(x, mean_s)  # x - μ, in acc precision
        sum_dy = _per_ghost(grad_y.sum(dim=2, dtype=acc), index, ghosts)
        sum_dy_xhat = invstd * _per_ghost(buf.mul_(grad_y).sum(dim=2), index, ghosts)
        n = (counts.to(acc) * x.shape[2]).unsqueeze(1)
        # dx = w·invstd·(dy - mean(dy) - x̂·mean(dy·x̂)) = a·dy + b·(x - μ) + c, per ghost and channel
        a = weight.to(acc) * invstd
        b = -a * invstd * sum_dy_xhat / n
        c = -a * sum_dy / n
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(_per_sample(index, c), torch.sub(x, mean_s, out=buf), _per_sample(index, b), out=buf)
            grad_x = grad_x.addcmul_(grad_y, _per_sample(index, a)).to(x.dtype)
        grad_weight = sum_dy_xhat.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None


def _ghost_batch_norm_traced(x, weight, bias, sizes: list[int], ghost_batch_size: int, eps: float):
    """Under torch.compile: plain differentiable ops (autograd derives the backward, inductor fuses it).

    Two-pass statistics in float32 (float64 for float64 input) on ``(N, C, L)`` input; returns the
    output, the ghost means and the ghost unbiased variances.
    """
    batch, spatial, ghosts = x.shape[0], x.shape[2], len(sizes)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    index = (torch.arange(batch, device=x.device) // ghost_batch_size).clamp(max=ghosts - 1)
    n = (torch.tensor(sizes, device=x.device, dtype=acc) * spatial).unsqueeze(1)
    xf = x.to(acc)
    zeros = xf.new_zeros(ghosts, x.shape[1])
    mean = zeros.index_add(0, index, xf.sum(dim=2)) / n
    centred = xf - _per_sample(index, mean)
    # corrected two-pass: the centred values' own mean removes the rounding error of the first mean
    correction = zeros.index_add(0, index, centred.sum(dim=2)) / n
    mean, centred = mean + correction, centred - _per_sample(index, correction)
    var = zeros.index_add(0, index, centred.square().sum(dim=2)) / n
    scale = torch.rsqrt(var + eps) * weight.to(acc)
    y = torch.addcmul(bias.to(acc).view(1, -1, 1), centred, _per_sample(index, scale)).to(x.dtype)
    return y, mean.detach(), (var * n / (n - 1)).detach()


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

    # None: by device (CPU eager: per-ghost ATen kernels; elsewhere: vectorised); under torch.compile the
    # traced ops always. Tests set "chunks", "vectorised" or "traced" to check every implementation.
    _implementation: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        batch, channels = x.shape[0], self.num_features
        if batch < 2:
            raise GhostBatchError(f"{type(self).__name__}: a training batch of {batch} sample has no batch statistics")
        stat_dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        weight = self.weight if self.weight is not None else x.new_ones(channels, dtype=stat_dtype)
        bias = self.bias if self.bias is not None else x.new_zeros(channels, dtype=stat_dtype)
        sizes = _ghost_sizes(batch, self.ghost_batch_size)
        implementation = self._implementation or ("chunks" if x.device.type == "cpu" else "vectorised")
        if torch.compiler.is_compiling():
            implementation = "traced"
        if implementation == "chunks":
            dense = x if _dense_format(x) is not None else x.contiguous()
            y, mean, var = _GhostBatchNormChunks.apply(dense, weight, bias, sizes, self.eps)
        else:
            flat = x.reshape(batch, channels, -1)
            if implementation == "traced":
                y, mean, var = _ghost_batch_norm_traced(flat, weight, bias, sizes, self.ghost_batch_size, self.eps)
            else:
                index, counts = _ghost_layout(batch, self.ghost_batch_size, x.device)
                y, mean, var = _GhostBatchNormVectorised.apply(flat, weight, bias, index, counts, self.eps)
            y = y.view(x.shape)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """One update from the mean over ghosts of the ghost means and of the ghost unbiased variances."""
        self.num_batches_tracked.add_(1)
        dtype = self.running_mean.dtype
        # momentum None: the cumulative average, its factor a tensor (no host sync, no torch.compile graph break)
        factor = self.num_batches_tracked.to(dtype).reciprocal() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.mean(0).to(dtype), factor)
        self.running_var.lerp_(unbiased_var.mean(0).to(dtype), factor)


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


def ghost_layers(model: nn.Module) -> dict[str, str]:
    """The Ghost BN layers of ``model`` (its qualified names) and the BatchNorm type each replaced."""
    return {
        name: type(m).__name__.replace("Ghost", "")
        for name, m in model.named_modules()
        if isinstance(m, _GhostBatchNorm)
    }


def left_batch_norms(model: nn.Module) -> list[str]:
    """The BatchNorm layers of ``model`` that are not Ghost BN (subclasses such as SyncBatchNorm are not converted)."""
    return [
        name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and not isinstance(m, _GhostBatchNorm)
    ]


def describe_ghost_layers(model: nn.Module, ghost_batch_size: int) -> str:
    """``ghost BN 16 in 5 BatchNorm1d layers (0.1, 1.1, ... 4.1)``, and any BatchNorm left as it was."""
    layers = ghost_layers(model)
    kinds = "/".join(sorted(set(layers.values())))
    names = list(layers)
    shown = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... {names[-1]}"
    left = left_batch_norms(model)
    kept = f"; left as they are: {', '.join(left[:4])}{', ...' * (len(left) > 4)}" if left else ""
    return f"ghost BN {ghost_batch_size} in {len(names)} {kinds} layer{'s' * (len(names) != 1)} ({shown}){kept}"


def has_ghost_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _GhostBatchNorm) for m in model.modules())
