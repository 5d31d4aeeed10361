"""A model slow to compute on one rank, as on an overloaded or throttled host: ``model.name:
tests/workers/slow_rank_model.py:build`` with ``model.kwargs.slow_rank`` and ``model.kwargs.delay_s``.
It writes each rank's process id to ``model.kwargs.pid_dir`` (when given), for a test to pause one."""

import os
import time
from pathlib import Path

import torch
from torch import nn


class SlowOnOneRank(nn.Module):
    """A small conv net whose forward sleeps ``delay_s`` while training, on the rank it was built slow on."""

    def __init__(self, num_classes: int, in_channels: int, delay_s: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, num_classes)
        self.delay_s = delay_s

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.delay_s:
            time.sleep(self.delay_s)
        return self.head(self.body(images))


def build(
    num_classes: int, in_channels: int, image_size: int, slow_rank: int = 1, delay_s: float = 0.0, pid_dir: str = ""
) -> nn.Module:
    rank = int(os.environ.get("RANK", "0"))
    if pid_dir:
        Path(pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
    return SlowOnOneRank(num_classes, in_channels, delay_s if rank == slow_rank else 0.0)
