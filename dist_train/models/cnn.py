"""The shallow convolutional network "C1" used for CIFAR in the large-batch literature.

A small VGG-style net in the spirit of the CIFAR "C1" model of Keskar et al. (2017), "On large-batch
training for deep learning", here with BatchNorm: three stages of 3x3 conv + BN + ReLU with widths
w, 2w, 4w (two convs in the last stage), each followed by 2x2 max-pooling, then global average
pooling and a linear classifier. Cheap enough to train on a CPU at w = 16..32.
"""

from __future__ import annotations

from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 'same' convolution followed by BatchNorm2d and ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class C1(nn.Sequential):
    """conv(w)-pool, conv(2w)-pool, conv(4w)-conv(4w)-pool, global average pool, Linear(4w, classes)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        # ceil_mode keeps every spatial size >= 1, so any image size works.
        layers: list[nn.Module] = [
            *_conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(2 * width, 4 * width),
            *_conv_bn_relu(4 * width, 4 * width),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        ]
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
