"""What a run shows: its one-line summary, and in TensorBoard the Overview cards, the custom-scalars layout,
the hosts table and the labelled grid of the training views.

TensorBoard's Time Series tab groups cards by the tag's first part, sorts the groups by name (upper
case before lower case) and opens the first two. The four numbers one looks for first are therefore
also written under ``Overview/`` (:data:`OVERVIEW`), named so that they sort in this order: validation
accuracy, training loss, learning rate, the noise scale (when measured), images/s. The CUSTOM SCALARS tab
gets :data:`LAYOUT`: the same four, then every rank's pace on one chart per measure, the weights' diffusion
and the gradient noise scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dist_train.nn.ghost_bn import describe_ghost_layers

if TYPE_CHECKING:
    from torch import nn

    from dist_train.config import Config
    from dist_train.data.contract import TrainLoader
    from dist_train.data.splits import DatasetSplits
    from dist_train.distributed import DistContext
    from dist_train.regime import Plan

OVERVIEW = {
    "val/acc": "Overview/accuracy (val)",
    "train/step_loss": "Overview/loss (train)",
    "train/lr": "Overview/lr",
    "ranks/images_per_s/total": "Overview/throughput (images per s)",
    "noise/b_simple": "Overview/noise scale (B_simple)",
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
        "seconds per step waiting for the other ranks": ["Multiline", [r"^ranks/sync_wait_s/rank\d+$"]],
        "images/s": ["Multiline", [r"^ranks/images_per_s/rank\d+$"]],
        "peak GPU memory (GB)": ["Multiline", [r"^ranks/peak_memory_gb/rank\d+$"]],
    },
    "Diffusion": {
        "||w_t - w_0||": ["Multiline", [r"^diffusion/distance$"]],
        "per layer": ["Multiline", [r"^diffusion/layer/"]],
    },
    "Noise scale": {
        "B_simple = tr(Σ) / |G|²": ["Multiline", [r"^noise/b_simple$"]],
        "|G|² (each measurement, average)": ["Multiline", [r"^noise/grad_sq"]],
        "tr(Σ) (each measurement, average)": ["Multiline", [r"^noise/trace_sigma"]],
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
    # A third of a row: still legible when TensorBoard shrinks the picture to the width of its card.
    font = ImageFont.load_default(size=max(10, min(40, int(row_height * 0.33))))
    width = max((int(font.getlength(name)) for name in names), default=0) + 2 * margin
    canvas = Image.new("RGB", (width + picture.width, picture.height), "white")
    canvas.paste(picture, (width, 0))
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        middle = (row + 0.5) * row_height
        draw.text((width - margin, middle), name, fill="black", font=font, anchor="rm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def count(n: int) -> str:
    """``n`` to three significant digits with a k/M/B suffix (``23.4k``, ``1.46M``; below 1,000 as it is)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def describe_run(
    cfg: Config, ctx: DistContext, model: nn.Module, data: DatasetSplits, loader: TrainLoader, plan: Plan
) -> str:
    """The run's one-line summary: where, how many processes on which hosts, model, data, batch, epochs, lr."""
    parameters = sum(p.numel() for p in model.parameters())
    hosts = sorted(set(ctx.hosts))
    on_hosts = f"{len(hosts)} hosts ({', '.join(hosts[:4])}{', ...' * (len(hosts) > 4)}) | " if len(hosts) > 1 else ""
    return (
        f"run {cfg.run_dir} | {ctx.world_size} process(es), {ctx.backend} on {ctx.device.type} | "
        f"{on_hosts}{cfg.model.name} ({count(parameters)} params) | "
        f"{len(data.train)} train / {len(data.val)} val | "
        f"batch {cfg.data.batch_size} ({loader.order.micro_batch}/process × {cfg.train.grad_accum_steps} accum) | "
        f"{plural(plan.epochs, 'epoch')} × {plural(loader.steps_per_epoch, 'step')} | lr {plan.lr:.4g}"
        + (f" | {describe_ghost_layers(model, cfg.bn.ghost_batch_size)}" if cfg.bn.ghost_batch_size else "")
    )


def hosts_table(ctx: DistContext) -> str:
    """The ranks of each host, as a Markdown table (TensorBoard's TEXT tab)."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(ctx.hosts):
        ranks.setdefault(host, []).append(rank)
    rows = [f"| {host} | {', '.join(map(str, found))} |" for host, found in ranks.items()]
    head = [f"{ctx.world_size} process(es) on {len(ranks)} host(s)", "", "| host | ranks |", "|---|---|"]
    return "\n".join([*head, *rows])


def view_grid(loader: TrainLoader, copies: int, micro_batch: int, layout: str, samples: int = 8) -> torch.Tensor:
    """A picture of the training input: a row per sample, its ``copies`` augmented views side by side and
    its class name on the left; the rows in as many columns as make the picture wider than tall (it is
    shown shrunk to the width of a TensorBoard card)."""
    from torchvision.utils import make_grid  # torchvision only for the picture, not for the layout tables

    images, labels = next(iter(loader.epoch(0)))
    images = images.float().cpu()
    index = torch.arange(copies * min(samples, micro_batch)).view(-1, copies)  # sample-major positions
    if layout == "copy_major":
        sample, view = index // copies, index % copies
        index = view * micro_batch + sample
    picked = images[index.reshape(-1)]
    low, high = picked.amin(dim=(1, 2, 3), keepdim=True), picked.amax(dim=(1, 2, 3), keepdim=True)
    picked = ((picked - low) / (high - low).clamp(min=1e-6)).view(*index.shape, *picked.shape[1:])
    names = getattr(loader.dataset, "classes", ())
    rows = [int(labels[i]) for i in index[:, 0].tolist()]
    titles = [names[r] if r < len(names) else str(r) for r in rows]
    for columns in range(1, len(rows) + 1):  # the fewest columns that make the picture at least as wide as tall
        per_column = math.ceil(len(rows) / columns)
        blocks = [
            labelled_rows(
                make_grid(picked[i : i + per_column].flatten(0, 1), nrow=copies, padding=1), titles[i : i + per_column]
            )
            for i in range(0, len(rows), per_column)
        ]
        grid = side_by_side(blocks)
        if grid.shape[2] >= grid.shape[1]:
            break
    return grid


def side_by_side(blocks: Sequence[torch.Tensor], gap: int = 12) -> torch.Tensor:
    """3×H×W pictures in [0, 1] next to each other, top-aligned on white, ``gap`` pixels apart."""
    height = max(block.shape[1] for block in blocks)
    width = sum(block.shape[2] for block in blocks) + gap * (len(blocks) - 1)
    canvas = torch.ones(3, height, width)
    left = 0
    for block in blocks:
        canvas[:, : block.shape[1], left : left + block.shape[2]] = block
        left += block.shape[2] + gap
    return canvas
