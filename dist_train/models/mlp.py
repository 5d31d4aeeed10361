"""The fully connected "F1" network of Hoffer, Hubara & Soudry (2017), "Train longer, generalize better".

The input image is flattened and passed through five hidden layers of Linear + BatchNorm1d + ReLU
(512 units each by default), then a linear classifier. The hidden Linear layers have no bias because
the BatchNorm that follows supplies one.
"""

from __future__ import annotations

from torch import nn


class MnistF1(nn.Sequential):
    """Flatten, ``depth`` x (Linear(., width) + BatchNorm1d + ReLU), Linear(width, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, width: int = 512, depth: int = 5) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)
