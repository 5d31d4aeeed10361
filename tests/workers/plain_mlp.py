"""A model without BatchNorm (its samples' gradients are independent), for the noise-scale tests."""

import torch
from torch import nn


def build(num_classes: int, in_channels: int, image_size: int, width: int = 32, logit_shift: float = 0.0) -> nn.Module:
    """Flatten, one hidden Linear + Tanh layer, then the classifier, whose bias starts ``logit_shift`` higher for
    class 0 (a gradient that points the same way for most samples: a smaller noise scale at initialisation)."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size**2, width), nn.Tanh(), nn.Linear(width, num_classes)
    )
    with torch.no_grad():
        model[-1].bias[0] += logit_shift
    return model
