"""Batch augmentation (Hoffer et al. 2020, "Augment your batch"): M views of each sample in one batch.

Method card
-----------
*Paper.* Each of the B samples of a batch appears M times, each copy with its
own random augmentation, so a step sees B·M images; the loss is the plain mean
over all of them and the learning-rate recipe stays that of B samples. Fewer
updates reach a given accuracy.

*Code.* Each process loads its B/W distinct samples and expands them by M
locally (``augment.copies``), in both loader backends: the torch backend's
transform returns M views of one decoded image, the DALI pipeline takes M random
crops/flips of one decoded image. :func:`arrange_views` lays the (B, M, ...)
views out copy-major (all samples' view 1, then view 2, ...; every ghost batch
then holds distinct samples) or sample-major, and repeats the labels to match.
``data.batch_size`` keeps counting distinct samples, which the lr rules use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ManyViews:
    """A transform returning ``copies`` independently augmented views of one image, stacked (M, C, H, W)."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], copies: int) -> None:
        self.transform = transform
        self.copies = copies

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.copies)])


def arrange_views(views: torch.Tensor, labels: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, C, H, W) views and (B,) labels -> (B·M, C, H, W) images and (B·M,) labels.

    ``copy_major``: image ``m·B + b`` is view m of sample b; ``sample_major``: image ``b·M + m``.
    """
    batch, copies = views.shape[:2]
    if layout == "copy_major":
        return views.transpose(0, 1).reshape(batch * copies, *views.shape[2:]), labels.repeat(copies)
    return views.reshape(batch * copies, *views.shape[2:]), labels.repeat_interleave(copies)


def batch_views(
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
    copies: int,
    layout: str = "copy_major",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch augmentation for any loop: (B, C, H, W) images -> (B·M, C', H', W') views, each image's ``copies``
    views drawn independently by ``transform``, laid out as :func:`arrange_views` does, with labels to match."""
    views = ManyViews(transform, copies)
    return arrange_views(torch.stack([views(image) for image in images]), labels, layout)
