"""Debugging aids for the training loop: find the host-device synchronisations a step makes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__", "__format__"}
)
"""Tensor methods that bring a value to the host: on a GPU each waits for the device (a synchronisation)."""
_TORCH_DIR = str(Path(torch.__file__).parent)


class HostReadCounter(TorchFunctionMode):
    """Records the reads of tensor values by the host (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``,
    ``.cpu()``, ...) made from Python while active: each is a host-device synchronisation on a GPU.

    A debugging aid that works on the CPU too (where such reads cost nothing): install it as
    :attr:`~dist_train.trainer.Trainer.step_guard` to check that training steps make none. Reads inside C++
    operators (a GPU ``nonzero``) are not seen; ``torch.cuda.set_sync_debug_mode("error")`` catches those on a
    GPU. Each read is recorded as ``(label(), "name at file:line")``: ``label`` gives the context (a step), the
    place is the first caller outside torch (so a read inside a torch function is charged to its caller).
    """

    def __init__(self, label: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.label = label
        self.reads: list[tuple[Any, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = sys._getframe(1)
            while caller.f_back is not None and caller.f_code.co_filename.startswith(_TORCH_DIR):
                caller = caller.f_back  # the first frame outside torch: whose code asked for the read
            self.reads.append((self.label(), f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}"))
        return func(*args, **(kwargs or {}))
