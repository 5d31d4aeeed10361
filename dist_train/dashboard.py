"""What TensorBoard shows first: the Overview cards, the custom-scalars layout and the labelled view grid.

TensorBoard's Time Series tab groups cards by the tag's first part, sorts the groups by name (upper
case before lower case) and opens the first two. The four numbers one looks for first are therefore
also written under ``Overview/`` (:data:`OVERVIEW`), named so that they sort in this order: validation
accuracy, training loss, learning rate, images/s. The CUSTOM SCALARS tab gets :data:`LAYOUT`: the same
four, then every rank's pace on one chart per measure, then the weights' diffusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

OVERVIEW = {
    "val/acc": "Overview/accuracy (val)",
    "train/step_loss": "Overview/loss (train)",
    "train/lr": "Overview/lr",
    "ranks/images_per_s/total": "Overview/throughput (images per s)",
}
"""Tags also written under ``Overview/``, the group the Time Series tab opens on, as the names they get there."""

LAYOUT = {
    "Overview": {
        "validation accuracy": ["Multiline", [r"^val/acc$"]],
        "training loss (per log step, per epoch)": ["Multiline", [r"^train/step_loss$", r"^train/loss$"]],
        "learning rate": ["Multiline", [r"^train/lr$"]],
        "images/s (all ranks)": ["Multiline", [r"^ranks/images_per_s/total$"]],
    },
    "Ranks": {
        "seconds per step": ["Multiline", [r"^ranks/step_s/rank\d+$"]],
        "seconds per step waiting for data": ["Multiline", [r"^ranks/data_wait_s/rank\d+$"]],
        "images/s": ["Multiline", [r"^ranks/images_per_s/rank\d+$"]],
        "peak GPU memory (GB)": ["Multiline", [r"^ranks/peak_memory_gb/rank\d+$"]],
    },
    "Diffusion": {
        "||w_t - w_0||": ["Multiline", [r"^diffusion/distance$"]],
        "per layer": ["Multiline", [r"^diffusion/layer/"]],
    },
}
"""The CUSTOM SCALARS tab: categories of charts, each a list of tag regular expressions."""


def labelled_rows(grid: torch.Tensor, names: Sequence[str], scale: int = 3, margin: int = 4) -> torch.Tensor:
    """``grid`` (C×H×W in [0, 1], ``len(names)`` rows of equal height, as ``make_grid`` lays them out) enlarged
    ``scale`` times, with each row's name written to its left: a 3×H'×W' image in [0, 1]."""
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    picture = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    row_height = picture.height / max(len(names), 1)
    font = ImageFont.load_default(size=max(10, min(16, int(row_height * 0.5))))
    width = max((int(font.getlength(name)) for name in names), default=0) + 2 * margin
    canvas = Image.new("RGB", (width + picture.width, picture.height), "white")
    canvas.paste(picture, (width, 0))
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        middle = (row + 0.5) * row_height
        draw.text((width - margin, middle), name, fill="black", font=font, anchor="rm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
