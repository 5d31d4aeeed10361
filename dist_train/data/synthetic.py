"""A procedurally generated, class-conditional image set that a small CNN can learn.

Each class has a smooth random colour pattern (its prototype, zero mean per channel, so the
average colour carries almost no class information). A sample is its class prototype seen
through a randomly shifted S×S window (S = ``image_size`` or 32), with random contrast, a
random colour cast, a random smooth "clutter" pattern shared by all classes, and per-pixel noise.
Everything is drawn from ``torch.Generator`` seeded with ``split_seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dist_train.config import DataConfig
from dist_train.data.arrays import ImageArrays
from dist_train.errors import ConfigError

GRID = 4
"""Prototypes are bicubic upsamplings of a GRID×GRID random field (low frequency)."""
NOISE = 0.9
"""Per-pixel noise, in units of the prototype's standard deviation."""
CLUTTER = 1.0
"""Amplitude of a per-image smooth random pattern added on top (structured noise)."""
CLUTTER_BANK = 32
"""Number of smooth patterns the clutter is mixed from."""
CAST = 0.5
"""Standard deviation of the per-image, per-channel colour offset."""
CONTRAST = (0.5, 1.5)
"""Range of the per-image contrast factor."""
PIXEL_SCALE = 40.0
"""uint8 value = 128 + PIXEL_SCALE · signal (clamped)."""


def prototypes(classes: int, canvas: int, generator: torch.Generator) -> torch.Tensor:
    """``classes``×3×canvas×canvas float patterns with zero mean and unit std per channel."""
    coarse = torch.randn(classes, 3, GRID, GRID, generator=generator)
    fine = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)
    fine = fine - fine.mean(dim=(2, 3), keepdim=True)
    return fine / fine.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def sample(protos: torch.Tensor, count: int, size: int, generator: torch.Generator) -> ImageArrays:
    """``count`` uint8 3×size×size images drawn around ``protos`` (balanced classes)."""
    classes, channels, canvas, _ = protos.shape
    labels = torch.randperm(count, generator=generator) % classes
    # Window of each sample into its class prototype, as flat indices into ``protos``.
    offsets = torch.randint(0, canvas - size + 1, (count, 2), generator=generator)
    planes = labels[:, None] * channels + torch.arange(channels)
    corner = (planes * canvas + offsets[:, 0:1]) * canvas + offsets[:, 1:2]
    span = torch.arange(size)
    window = span[:, None] * canvas + span
    signal = protos.flatten().take(corner[:, :, None, None] + window)
    low, high = CONTRAST
    signal.mul_(low + (high - low) * torch.rand(count, 1, 1, 1, generator=generator))
    signal.add_(CAST * torch.randn(count, channels, 1, 1, generator=generator))
    # Clutter: a random mix of smooth patterns shared by all classes.
    bank = prototypes(CLUTTER_BANK, size, generator).flatten(1)
    mix = torch.randn(count, CLUTTER_BANK, generator=generator) * (CLUTTER / CLUTTER_BANK**0.5)
    signal.add_((mix @ bank).view_as(signal))
    signal.add_(torch.randn(signal.shape, generator=generator), alpha=NOISE)
    images = signal.mul_(PIXEL_SCALE).add_(128.0).round_().clamp_(0, 255).to(torch.uint8)
    return ImageArrays(images, labels)


def make_synthetic(cfg: DataConfig) -> tuple[ImageArrays, ImageArrays]:
    """Deterministic (train, val) sets from ``cfg.split_seed``; the same seed gives the same tensors."""
    size = cfg.image_size or 32
    if cfg.synthetic_classes < 2:
        raise ConfigError(f"data.synthetic_classes must be at least 2, got {cfg.synthetic_classes}")
    if cfg.synthetic_train_size < 1 or cfg.synthetic_val_size < 0:
        raise ConfigError(
            f"data.synthetic_train_size must be >= 1 and data.synthetic_val_size >= 0, got "
            f"{cfg.synthetic_train_size} and {cfg.synthetic_val_size}"
        )
    if size < 4:
        raise ConfigError(f"data.image_size must be at least 4 for synthetic data, got {size}")
    generator = torch.Generator().manual_seed(cfg.split_seed)
    canvas = size + max(2, size // 4) * 2
    protos = prototypes(cfg.synthetic_classes, canvas, generator)
    train_seed, val_seed = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    train = sample(protos, cfg.synthetic_train_size, size, torch.Generator().manual_seed(train_seed))
    val = sample(protos, cfg.synthetic_val_size, size, torch.Generator().manual_seed(val_seed))
    return train, val
