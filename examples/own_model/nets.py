"""Your own network, trained by import path: ``model.name: examples/own_model/nets.py:build``.

dist_train calls ``build(num_classes=..., in_channels=..., image_size=..., **model.kwargs)``; it must return an
``nn.Module`` giving (N, num_classes) logits. Its BatchNorm layers become Ghost BN with ``bn.ghost_batch_size``.
"""

from torch import nn


def build(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> nn.Module:
    """Two conv-BN-ReLU blocks, global average pooling and a linear classifier."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
