"""Images/s delivered to the training loop by the torch, DALI (CPU) and tensor training loaders, side by side.

    python bench/loaders.py                              # 8192 CIFAR-shaped arrays, 768 JPEGs, 3 repeats
    python bench/loaders.py --images 4096 --jpegs 512 --repeats 2
    python bench/loaders.py --workers 2 --cifar-batch 128 --jpeg-batch 32
    python bench/loaders.py --sources synthetic --backends torch,tensor   # tensor vs torch, CIFAR shapes, M = 1, 4

Two sources:

* ``synthetic 32x32``: in-memory uint8 arrays (``data.dataset=synthetic``), pad-crop + flip;
* ``jpeg 256->224``: an ImageFolder tree of 256×256 JPEGs (quality 90, 4 classes) written to a temporary
  directory with PIL, random-resized-crop to 224 + flip.

For each source and M (``augment.copies``) = 1 and 4, both loaders get the same micro-batch of B distinct
samples and the same budget of 2 (``--workers``): ``num_workers`` DataLoader processes for the torch backend
(``build_train_loader`` over ``build_datasets(cfg.data, copies=M)``: the torchvision transform applied M
times to one decoded image), ``num_threads`` for the DALI pipeline (``DaliTrainLoader`` with
``device_id=None``, one pipeline for all epochs: on JPEGs at M = 1 the view is decoded from its crop window
only, ``decoders.image_slice``; at M = 4 each image is decoded once and its 4 views resized from their
windows). On JPEGs DALI's other way is measured too (``dali once``: decode the whole image at M = 1;
``dali per view``: decode each view's window at M = 4). On JPEGs with M = 4 a further loader decodes the
file again for every view (the torch backend over a dataset whose item loads the file M times), to show what
decoding once saves.

The tensor backend (``data.backend=tensor``, in-memory sources only) keeps the split as one uint8 tensor on the
device (here CPU memory) and makes each batch in the training process with whole-batch tensor ops; its
budget is torch threads of the training process (``--tensor-threads``, 1 by default: less than the
workers'), not worker processes. ``--sources`` and ``--backends``
pick the rows (ratios are printed against torch, which is then always measured). ``--device cuda`` puts the
tensor loader's split on the GPU and copies the other loaders' (pinned) batches there, as the trainer does.

The loop only iterates ``loader.epoch(e)`` and reads one element of each micro-batch (no model). A timed
unit is one whole epoch, so each backend's per-epoch start-up (worker processes, pipeline build) is counted
as the training loop would see it. After a warm-up of a few batches per configuration, ``--repeats``
rounds run every configuration once each (interleaved, order reversed every other round); the best epoch
is reported, counting all B·M views, with the CPU time per image (this process's threads and its exited
worker processes, least over the epochs): the work each loader does, which other load on the machine
changes less than it changes the wall-clock rates.

CPU only: DALI's ``device="mixed"`` (GPU) JPEG decoding is not measured here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dist_train.config import DataConfig, load_config
from dist_train.data import build_datasets
from dist_train.data.dali import DaliTrainLoader
from dist_train.data.imagefolder import load_image
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.tensor_loader import TensorTrainLoader
from dist_train.data.transforms import recipe_for

WARMUP_BATCHES = 3
JPEG_SIZE = 256
JPEG_CLASSES = 4
JPEG_QUALITY = 90


class DecodePerView(Dataset):
    """ImageFolder items whose M views each come from their own decode of the file: (M, C, H, W), label."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[torch.Tensor], torch.Tensor], copies: int):
        self.samples, self.transform, self.copies = samples, transform, copies

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return torch.stack([self.transform(load_image(path)) for _ in range(self.copies)]), label


def write_jpegs(root: Path, count: int, seed: int = 0) -> None:
    """``count`` 256×256 RGB JPEGs in ``root/train/class{k}/``: smooth colour fields with texture and noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, JPEG_SIZE, dtype=np.float32)
    for k in range(JPEG_CLASSES):
        (root / "train" / f"class{k}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((JPEG_SIZE, JPEG_SIZE), Image.BICUBIC), np.float32)
        freq = rng.uniform(4, 24, 2)
        stripes = 40 * np.sin(2 * np.pi * (freq[0] * ramp[:, None] + freq[1] * ramp[None, :]))
        pixels = smooth + stripes[..., None] + rng.normal(0, 12, smooth.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(root / "train" / f"class{i % JPEG_CLASSES}" / f"{i:05d}.jpg", quality=JPEG_QUALITY)


@dataclass
class Case:
    """One loader configuration and its measured epochs."""

    source: str
    copies: int
    name: str
    loader: Any
    seconds: list[float] = field(default_factory=list)
    first_batch: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU seconds of each epoch (:func:`cpu_seconds`)."""
    images: int = 0
    threads: int = 0
    """torch threads of this process while this loader runs (0: unchanged)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the loop takes the batches (copied there as the trainer does; on CUDA one sync per epoch)."""

    @contextmanager
    def budget(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or before)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def consume(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.device.type == "cpu":
            touch(images, labels)
        else:  # what Trainer.to_device does (a no-op for the tensor loader's batches)
            images.to(self.device, non_blocking=True)
            labels.to(self.device, non_blocking=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_up(self) -> None:
        with self.budget():
            for index, (images, labels) in enumerate(self.loader.epoch(0)):
                self.consume(images, labels)
                if index + 1 == WARMUP_BATCHES:
                    break
            self.sync()

    def run_epoch(self, epoch: int) -> None:
        images_seen = 0
        first = None
        with self.budget():
            cpu_start = cpu_seconds()
            start = time.perf_counter()
            for images, labels in self.loader.epoch(epoch):
                self.consume(images, labels)
                images_seen += images.shape[0]
                if first is None:
                    first = time.perf_counter() - start
            self.sync()
            self.seconds.append(time.perf_counter() - start)
            self.cpu.append(cpu_seconds() - cpu_start)
        self.first_batch.append(first or 0.0)
        self.images = images_seen

    @property
    def rate(self) -> float:
        return self.images / min(self.seconds)

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per image, least over the epochs."""
        return 1000 * min(self.cpu) / self.images

    def describe(self) -> str:
        return (
            f"    {self.name:<15} {self.loader.steps_per_epoch:3d} batches, {self.images:6d} images/epoch: "
            f"best {min(self.seconds):6.2f} s, median {statistics.median(self.seconds):6.2f} s, "
            f"first batch {statistics.median(self.first_batch):5.2f} s -> {self.rate:7.0f} img/s, "
            f"{self.cpu_ms:5.2f} CPU ms/img"
        )


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) and of its children that have exited (the
    DataLoader's workers, which end with each epoch)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def dali_views(copies: int, other: bool = False) -> str:
    """How DaliTrainLoader makes JPEG views at M = ``copies`` (``other``: the way it does not choose)."""
    per_view = (copies == 1) != other
    return "decoding each view's window" if per_view else "decoding once"


def touch(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Read one element of each tensor, as a training step would consume the batch."""
    return float(images[-1, -1, -1, -1]) + float(labels[-1])


def check_batch(case: Case, batch: int) -> None:
    """Both backends deliver (B·M, C, H, W) float32 images with B·M labels."""
    images, labels = next(iter(case.loader.epoch(0)))
    want = batch * case.copies
    if images.dtype != torch.float32 or images.shape[0] != want or labels.shape != (want,):
        raise SystemExit(f"{case.source} M={case.copies} {case.name}: got {images.dtype} {tuple(images.shape)}")


def data_config(overrides: list[str]) -> DataConfig:
    return load_config(None, overrides).data


def make_cases(
    source: str,
    cfg: DataConfig,
    batch: int,
    copies: int,
    budget: int,
    backends: list[str],
    tensor_threads: int = 0,
    device: torch.device | None = None,
) -> list[Case]:
    """The torch loader, then those of ``backends`` (DALI; tensor on in-memory sources; decode-per-view on JPEGs
    with M > 1) of one source and M, delivering to ``device`` (default: the CPU)."""
    device = device or torch.device("cpu")
    pin = device.type == "cuda"
    views = build_datasets(cfg, copies=copies)
    single = build_datasets(cfg, copies=1)
    torch_loader = build_train_loader(views.train, LoaderOptions(batch, workers=budget, pin_memory=pin))
    cases = [Case(source, copies, "torch", torch_loader)]
    if "dali" in backends:
        options = LoaderOptions(batch, workers=budget, copies=copies)
        cases.append(
            Case(source, copies, "dali", DaliTrainLoader(single.train, recipe_for(cfg), views.image_size, options))
        )
    if "dali" in backends and source.startswith("jpeg"):  # DALI's other way of making the views
        options = LoaderOptions(batch, workers=budget, copies=copies)
        name = "dali per view" if copies > 1 else "dali once"
        loader = DaliTrainLoader(single.train, recipe_for(cfg), views.image_size, options, decode_per_view=copies > 1)
        cases.append(Case(source, copies, name, loader))
    if "tensor" in backends and not source.startswith("jpeg"):
        loader = TensorTrainLoader(single.train, recipe_for(cfg), LoaderOptions(batch, copies=copies), device)
        cases.append(Case(source, copies, "tensor", loader, threads=tensor_threads))
    if source.startswith("jpeg") and copies > 1:
        per_view = DecodePerView(single.train.samples, single.train.transform, copies)
        loader = build_train_loader(per_view, LoaderOptions(batch, workers=budget, pin_memory=pin))
        cases.append(Case(source, copies, "decode per view", loader))
    for case in cases:
        case.device = device
        check_batch(case, batch)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8192, help="CIFAR-shaped (32×32×3) training images")
    parser.add_argument("--jpegs", type=int, default=768, help="256×256 JPEGs to generate (10%% held out)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per configuration")
    parser.add_argument("--workers", type=int, default=2, help="torch DataLoader workers = DALI threads")
    parser.add_argument("--cifar-batch", type=int, default=128, help="distinct samples per CIFAR-shaped batch")
    parser.add_argument("--jpeg-batch", type=int, default=32, help="distinct samples per JPEG batch")
    parser.add_argument("--sources", default="synthetic,jpeg", help="comma-separated: synthetic (32x32), jpeg")
    parser.add_argument(
        "--backends", default="torch,dali,tensor", help="comma-separated: torch (always run), dali, tensor"
    )
    parser.add_argument(
        "--tensor-threads",
        type=int,
        default=1,
        help="torch threads while the tensor loader runs (0: the process's); 1 by default: on a busy machine two "
        "intra-op threads wait on each other, and one thread is less than the workers' budget",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the loop takes the batches: cpu, or cuda (the tensor loader's split lives there; the others' "
        "pinned batches are copied there; DALI still runs CPU operators)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    chosen = set(args.sources.split(","))
    backends = args.backends.split(",")
    if not chosen <= {"synthetic", "jpeg"} or not set(backends) <= {"torch", "dali", "tensor"}:
        parser.error(f"unknown --sources {args.sources} or --backends {args.backends}")

    dali = f"DALI {__import__('nvidia.dali').dali.__version__}, " if "dali" in backends else ""
    print(
        f"torch {torch.__version__}, {dali}{torch.get_num_threads()} torch threads, "
        f"{args.tensor_threads or torch.get_num_threads()} while the tensor loader runs; "
        f"budget: {args.workers} DataLoader workers = {args.workers} DALI threads; best of {args.repeats} epochs "
        f"after {WARMUP_BATCHES} warm-up batches"
    )
    if device.type == "cpu":
        print("(CPU only: device=mixed not measured, no GPU)")
    else:
        print(f"(batches delivered to {device}; DALI runs CPU operators: device=mixed not measured)")
    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        root = Path(tmp)
        sources = []
        if "synthetic" in chosen:
            synthetic = data_config(
                ["data.dataset=synthetic", f"data.synthetic_train_size={args.images}", "data.synthetic_val_size=64"]
            )
            sources.append(("synthetic 32x32", synthetic, args.cifar_batch))
        if "jpeg" in chosen:
            start = time.perf_counter()
            write_jpegs(root, args.jpegs)
            print(
                f"wrote {args.jpegs} {JPEG_SIZE}x{JPEG_SIZE} JPEGs (q{JPEG_QUALITY}) "
                f"in {time.perf_counter() - start:.1f} s"
            )
            jpeg = data_config(
                ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=224", "data.val_fraction=0.1"]
            )
            sources.append((f"jpeg {JPEG_SIZE}->224", jpeg, args.jpeg_batch))
        groups = [
            make_cases(s, cfg, b, m, args.workers, backends, args.tensor_threads, device)
            for s, cfg, b in sources
            for m in (1, 4)
        ]
        cases = [case for group in groups for case in group]
        for case in cases:
            case.warm_up()
        for r in range(args.repeats):
            for case in cases if r % 2 == 0 else reversed(cases):
                case.run_epoch(epoch=r + 1)

    print()
    for group in groups:
        torch_case, others = group[0], [c for c in group[1:] if c.name != "decode per view"]
        rates = "".join(f" | {c.name} {c.rate:.0f} img/s" for c in others)
        ratios = "".join(
            f" | {c.name}/torch {c.rate / torch_case.rate:.2f}x (CPU/img {torch_case.cpu_ms / c.cpu_ms:.2f}x less)"
            for c in others
        )
        print(f"{torch_case.source} M={torch_case.copies}: torch {torch_case.rate:.0f} img/s{rates}{ratios}")
        for case in group:
            print(case.describe())
    for group in groups:
        per_view = [c for c in group if c.name == "decode per view"]
        if per_view and any(c.name == "dali" for c in group):
            torch_case, dali_case, per_view = group[0], group[1], per_view[0]
            for label, case in (("torch", torch_case), ("dali", dali_case)):
                print(
                    f"{case.source} M={case.copies}: one decode ({label}) {case.rate:.0f} img/s vs decode per view "
                    f"{per_view.rate:.0f} img/s: {case.rate / per_view.rate:.2f}x "
                    f"(CPU/img {per_view.cpu_ms / case.cpu_ms:.2f}x less)"
                )
    for group in groups:  # DALI's two ways of making JPEG views, its choice first
        by_name = {c.name: c for c in group}
        for other in ("dali per view", "dali once"):
            if other in by_name:
                chosen_case, case = by_name["dali"], by_name[other]
                print(
                    f"{case.source} M={case.copies}: DALI {dali_views(case.copies)} {chosen_case.rate:.0f} img/s "
                    f"vs {dali_views(case.copies, other=True)} {case.rate:.0f} img/s: "
                    f"{chosen_case.rate / case.rate:.2f}x (CPU/img {case.cpu_ms / chosen_case.cpu_ms:.2f}x less)"
                )
    print(
        "targets: DALI >= 2x torch on JPEGs at M = 1 and >= 1.5x at M = 4; M = 4 from one decode >= 2x "
        "decode-per-view on JPEGs; "
        "tensor >= 3x torch on 32x32 arrays at M = 1 and 4 (CPU only: device=mixed not measured, no GPU)"
    )


if __name__ == "__main__":
    main()
