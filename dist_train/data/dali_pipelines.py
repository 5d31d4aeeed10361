"""The DALI graphs of the DALI loaders and the random draws that drive them.

One pipeline serves a loader for its whole life. Everything random is drawn here, in numpy, from a seed
per micro-batch, and enters the pipeline through ``external_source`` with the data: each view of each
sample gets a row ``(y0, x0, y1, x1, flip, cutout_y, cutout_x)`` (:data:`PARAMS`), its crop window in
the source image's pixels, whether to mirror it, and the top-left corner of its cutout square. So a
batch's augmentation depends on its seed only, not on what the pipeline made before (DALI's own random
operators would carry their state from batch to batch), and a resumed epoch is the uninterrupted one.

The crop windows follow torchvision's ``RandomResizedCrop`` (:func:`resized_crops`), ``RandomCrop`` with
padding (:func:`pad_crops`) and ``Resize(size·256/224) + CenterCrop(size)`` (:func:`centre_crops`, the
evaluation view, given as the window of the source it samples).

JPEGs: with one view per sample each view is decoded from its window only (``decoders.image_slice``:
the fused decode and crop of NVIDIA's ResNet-50 pipelines, decoding the region of interest); with M > 1
views the image is decoded once and each view resized from its window (``fn.resize`` with a ROI), which
bench/loaders.py measures faster than M region decodes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dist_train.data.catalog import Recipe

PARAMS = 7
"""Per view: crop window y0, x0, y1, x1 (source pixels), flip (0/1), cutout square's top-left y, x."""
ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def read_file(path: str) -> np.ndarray:
    """A file's bytes, as DALI's decoders take them."""
    return np.fromfile(path, dtype=np.uint8)


def image_size(encoded: np.ndarray) -> tuple[int, int]:
    """(height, width) of an encoded image, from its header (PIL reads no pixels for this)."""
    with Image.open(io.BytesIO(encoded.tobytes())) as image:
        width, height = image.size
    return height, width


def resized_crops(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """torchvision ``RandomResizedCrop`` windows (y0, x0, y1, x1) for images of ``sizes`` (n, 2): area share
    in SCALE, aspect ratio log-uniform in RATIO, ATTEMPTS tries, else the centred crop of clamped ratio."""
    count = len(sizes)
    height, width = sizes[:, :1].astype(np.float64), sizes[:, 1:].astype(np.float64)
    area = height * width * rng.uniform(*SCALE, (count, ATTEMPTS))
    ratio = np.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1]), (count, ATTEMPTS)))
    w = np.round(np.sqrt(area * ratio))
    h = np.round(np.sqrt(area / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    h, w = h[rows, first], w[rows, first]
    height, width = height[:, 0], width[:, 0]
    # The fallback: the whole image, or its centre at the nearest allowed ratio.
    wide, tall = width / height > RATIO[1], width / height < RATIO[0]
    found = fits.any(axis=1)
    fall_w = np.where(wide, np.round(height * RATIO[1]), width)
    fall_h = np.where(tall, np.round(width / RATIO[0]), height)
    h, w = np.where(found, h, fall_h), np.where(found, w, fall_w)
    u = rng.random((count, 2))
    top = np.where(found, np.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
    left = np.where(found, np.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
    return np.stack([top, left, top + h, left + w], axis=1)


def pad_crops(rng: np.random.Generator, count: int, size: int, pad: int) -> np.ndarray:
    """``RandomCrop(size, padding=pad)`` windows: whole-pixel offsets -pad..pad, each equally likely."""
    offsets = rng.integers(-pad, pad + 1, (count, 2)).astype(np.float64)
    return np.concatenate([offsets, offsets + size], axis=1)


def centre_crops(sizes: np.ndarray, size: int) -> np.ndarray:
    """The source window of ``Resize(int(size·256/224))`` then ``CenterCrop(size)`` (torchvision v2's
    sizes and rounding), per image of ``sizes`` (n, 2)."""
    short = int(size * 256 / 224)
    windows = np.zeros((len(sizes), 4))
    for i, (height, width) in enumerate(sizes.tolist()):
        if height <= width:
            new_h, new_w = short, int(short * width / height)
        else:
            new_h, new_w = int(short * height / width), short
        top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
        sy, sx = height / new_h, width / new_w
        windows[i] = (top * sy, left * sx, (top + size) * sy, (left + size) * sx)
    return windows


@dataclass(frozen=True)
class Graph:
    """What one pipeline computes: its input kind, crop, views and normalisation."""

    recipe: Recipe
    size: int
    """Side of the output views (the input's side for uncropped arrays)."""
    copies: int
    encoded: bool
    """Inputs are encoded files (ImageFolder), else HWC uint8 arrays."""
    fused: bool
    """Encoded inputs, random-resized crops: each view decoded from its own window (``image_slice``); else
    each image decoded once."""
    channels: int = 3
    """Channels of the decoded images (1: greyscale)."""

    @property
    def slices(self) -> bool:
        """Whether each view is decoded from its own window."""
        return self.encoded and self.fused and self.recipe.crop == "resized"

    @property
    def crops(self) -> bool:
        """Whether views take a window of the input (not for unaugmented arrays)."""
        return self.recipe.crop in ("pad", "resized") or (self.recipe.crop == "none" and self.recipe.resize_eval)

    def draw(self, rng: np.random.Generator | None, sizes: np.ndarray) -> np.ndarray:
        """(n, copies, PARAMS) float32 rows for n images of ``sizes`` (n, 2); ``rng`` None: no randomness."""
        recipe, count = self.recipe, len(sizes)
        params = np.zeros((count, self.copies, PARAMS))
        for m in range(self.copies):
            if recipe.crop == "resized" and rng is not None:
                params[:, m, :4] = resized_crops(rng, sizes)
            elif recipe.crop == "pad" and rng is not None:
                params[:, m, :4] = pad_crops(rng, count, self.size, recipe.pad)
            elif recipe.resize_eval:
                params[:, m, :4] = centre_crops(sizes, self.size)
            else:
                params[:, m, 2:4] = sizes
            if recipe.flip and rng is not None:
                params[:, m, 4] = rng.integers(0, 2, count)
            if recipe.cutout and rng is not None:
                params[:, m, 5:7] = rng.integers(0, self.size, (count, 2)) - recipe.cutout // 2
        return params.astype(np.float32)

    def build(self, dali: Any, batch_size: int, threads: int, device_id: int | None) -> Any:
        """The pipeline: inputs ``data`` (a batch of files or HWC arrays) and ``params`` (n, copies, PARAMS);
        outputs the ``copies`` views, float32 HWC."""
        fn, types = dali.fn, dali.types
        gpu = device_id is not None
        device = "gpu" if gpu else "cpu"
        pipe = dali.Pipeline(
            batch_size=batch_size,
            num_threads=max(1, threads),
            device_id=device_id,
            exec_dynamic=True,
            prefetch_queue_depth=1,
        )
        with pipe:
            data = fn.external_source(name="data", layout=None if self.encoded else "HWC")
            params = fn.external_source(name="params")
            decode = {
                "output_type": types.GRAY if self.channels == 1 else types.RGB,
                "adjust_orientation": False,
                "jpeg_fancy_upsampling": True,
            }
            decode_on = "mixed" if gpu else "cpu"
            if self.encoded and not self.slices:
                images = fn.decoders.image(data, device=decode_on, **decode)
            elif not self.encoded:
                images = data.gpu() if gpu else data
            views = []
            for m in range(self.copies):
                start, end = params[m, 0:2], params[m, 2:4]
                pixels = {"start": fn.cast(start, dtype=types.INT32), "end": fn.cast(end, dtype=types.INT32)}
                if self.slices:
                    window = fn.decoders.image_slice(data, **pixels, axis_names="HW", device=decode_on, **decode)
                    view = fn.resize(window, size=[self.size, self.size], device=device)
                elif self.recipe.crop == "pad":
                    view = fn.slice(images, **pixels, axis_names="HW", out_of_bounds_policy="pad", device=device)
                elif self.crops:
                    view = fn.resize(
                        images,
                        size=[self.size, self.size],
                        roi_start=start,
                        roi_end=end,
                        roi_relative=False,
                        device=device,
                    )
                else:
                    view = images
                view = fn.crop_mirror_normalize(
                    view,
                    mirror=fn.cast(params[m, 4], dtype=types.INT32),
                    mean=[255 * v for v in self.recipe.mean],
                    std=[255 * v for v in self.recipe.std],
                    dtype=types.FLOAT,
                    output_layout="HWC",  # DALI's CPU normalisation writes CHW at half the speed
                    device=device,
                )
                if self.recipe.cutout:  # fn.erase clips the square at the borders
                    view = fn.erase(
                        view,
                        anchor=params[m, 5:7],
                        shape=[float(self.recipe.cutout)] * 2,
                        axis_names="HW",
                        fill_value=0.0,
                        device=device,
                    )
                views.append(view)
            pipe.set_outputs(*views)
        return pipe
