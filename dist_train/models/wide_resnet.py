"""Wide Residual Networks of Zagoruyko & Komodakis (2016), "Wide residual networks".

WRN-d-k: a 3x3 stem of 16 channels, then three groups of (d - 4) / 6 pre-activation basic blocks
with 16k, 32k and 64k channels (the last two start with stride 2), a final BN-ReLU, global average
pooling and a linear classifier. Shortcuts that change shape are 1x1 convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, added to the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        # When the shape changes, the projection sees the pre-activated input, as in the paper's code.
        shortcut = x if self.projection is None else self.projection(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k; ``depth - 4`` must be divisible by 6."""

    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or k < 1:
            raise ValueError(f"WRN needs depth = 6n + 4 (n >= 1) and k >= 1, got depth {depth}, k {k}")
        blocks_per_group = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        channels = 16
        for index, group_width in enumerate((16 * k, 32 * k, 64 * k)):
            blocks = []
            for block in range(blocks_per_group):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(PreActBlock(channels, group_width, stride, dropout))
                channels = group_width
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.groups(self.stem(x))))
