"""Gradient clipping by the global norm (``train.grad_clip_norm``), and that norm for the log, on the device.

Hoffer et al. (2017) clip gradients in their large-batch recipes; clipping is the loop's (between the backward
and the optimizer step), so it is one function here rather than a callback.
"""

from __future__ import annotations

import torch
from torch import nn


def clip_gradients(module: nn.Module, clip: float, want_norm: bool, device: torch.device) -> torch.Tensor:
    """Clip to ``clip`` (if positive); the global gradient norm, on the device, or NaN when neither clipping nor
    ``want_norm`` needs it. Neither reads the norm (no ``error_if_nonfinite``): nothing waits for the device."""
    if clip > 0:
        return nn.utils.clip_grad_norm_(module.parameters(), clip)
    if want_norm:
        return nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    return torch.full((), float("nan"), device=device)
