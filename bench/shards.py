"""ImageFolder against tar shards, side by side: files opened per epoch and images/s, cold and warm.

    python bench/shards.py                       # 50,000 JPEGs (32x32), batch 256, torch and dali
    python bench/shards.py --images 5000 --loaders torch

The JPEGs (quality 90, 10 classes, in ``--dir``, kept between runs) are written as an ImageFolder, then
sharded by ``dist-train shard``'s writer (the default shard size). For each loader (``torch``: the
DataLoader in this process, ``--workers`` 0; ``dali``: the CPU pipeline with ``--threads``) and each
format, one epoch of the training set (random-resized crop to 24 + flip) is timed twice: cold, after
``echo 3 > /proc/sys/vm/drop_caches`` (root only; the output says when the page cache could not be dropped,
and the "cold" epoch is then warm too), and warm. Files opened are counted with Python's audit hook
(``open`` events of this process: every image file, shard and index). The loop only iterates
``loader.epoch(0)`` (no model).

Targets: shards open at most 1/1,000 of ImageFolder's files and reach at least 1.5x its cold images/s with
the same loader.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dist_train.config import DataConfig
from dist_train.data import build_datasets
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.shard_writer import write_shards
from dist_train.data.transforms import recipe_for

OPENS = [0]


def _count_opens(event: str, args: tuple) -> None:
    if event == "open":
        OPENS[0] += 1


def make_images(root: Path, count: int, size: int = 32) -> None:
    """``count`` JPEGs in ``root/train/<class>/`` (smooth random patterns, so they compress like photos)."""
    if (root / "done").exists() and int((root / "done").read_text()) == count:
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text(str(count))


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


@dataclass
class Result:
    images_per_s: float
    opens: int


def one_epoch(cfg: DataConfig, loader_name: str, batch: int, workers: int, threads: int, cold: bool) -> Result:
    """Build the loader (its files listed or indexed) and time one epoch; opens counted from the build on."""
    if cold:
        drop_caches()
    OPENS[0] = 0
    start = time.perf_counter()
    data = build_datasets(cfg)
    if loader_name == "dali":
        from dist_train.data.dali import DaliTrainLoader

        options = LoaderOptions(batch, seed=0, workers=threads)
        loader = DaliTrainLoader(data.train, recipe_for(cfg), data.image_size, options)
    else:
        loader = build_train_loader(data.train, LoaderOptions(batch, seed=0, workers=workers))
    images = 0
    for x, _ in loader.epoch(0):
        images += len(x)
    return Result(images / (time.perf_counter() - start), OPENS[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--dir", default="/tmp/dist_train_bench_shards", help="where the JPEGs and shards go")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--loaders", default="torch,dali")
    parser.add_argument("--workers", type=int, default=0, help="torch DataLoader workers (0: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="DALI pipeline threads")
    args = parser.parse_args()
    root = Path(args.dir)
    folder, shards = root / "imagefolder", root / "shards"
    started = time.perf_counter()
    make_images(folder, args.images)
    common = {"image_size": 24, "val_fraction": 0.0, "num_workers": args.workers}
    tree = DataConfig(dataset="imagefolder", root=str(folder), **common)
    if not (shards / "manifest.json").exists():
        write_shards(tree, shards)
    tars = len(list(shards.glob("train-*.tar")))
    print(f"{args.images} JPEGs in {folder}; {tars} train shard(s) in {shards} ({time.perf_counter() - started:.0f} s)")
    if not drop_caches():
        print("page cache NOT dropped (needs root and a writable /proc/sys/vm/drop_caches): cold = warm here")
    sys.addaudithook(_count_opens)
    sources = {"imagefolder": tree, "shards": DataConfig(dataset="webdataset", root=str(shards), **common)}
    results: dict[tuple[str, str, str], Result] = {}
    for loader in args.loaders.split(","):
        for kind, cfg in sources.items():
            for cache in ("cold", "warm"):
                result = one_epoch(cfg, loader, args.batch, args.workers, args.threads, cache == "cold")
                results[loader, kind, cache] = result
                print(f"{loader:5} {kind:11} {cache}: {result.images_per_s:8.0f} images/s, {result.opens} files opened")
    for loader in args.loaders.split(","):
        folder_cold, shard_cold = results[loader, "imagefolder", "cold"], results[loader, "shards", "cold"]
        shard_warm, folder_warm = results[loader, "shards", "warm"], results[loader, "imagefolder", "warm"]
        opens = shard_cold.opens / folder_cold.opens
        speed = shard_cold.images_per_s / folder_cold.images_per_s
        warm = shard_warm.images_per_s / folder_warm.images_per_s
        print(
            f"{loader}: shards/imagefolder files opened {opens:.2g} (target <= 0.001: "
            f"{'met' if opens <= 1e-3 else 'missed'}), cold images/s {speed:.2f}x (target >= 1.5x: "
            f"{'met' if speed >= 1.5 else 'missed'}), warm images/s {warm:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
