"""Evaluation: loss and accuracy of a module over every rank's shard of a data set, each image counted once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup

from dist_train.distributed import all_reduce_sum


@torch.no_grad()
def evaluate(
    module: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    to_device: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], Any],
    group: ProcessGroup | None = None,
) -> tuple[float, float]:
    """Loss and accuracy of ``module`` over ``loader``'s shards, summed over the ranks of ``group``."""
    module.eval()
    device = next(module.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # summed on the device, read once at the end
    for images, labels in loader:
        images, labels = to_device(images, labels)
        with autocast():
            logits = module(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = (logits.argmax(1) == labels).sum()
        totals[0] += loss.double()
        totals[1] += correct.double()
        totals[2] += labels.numel()
    totals = all_reduce_sum(totals, group)
    loss_sum, correct_sum, count = totals.tolist()
    return loss_sum / count, correct_sum / count
