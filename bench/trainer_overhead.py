"""Time dist_train's Trainer against a minimal hand-written loop: same model, data and steps.

    python bench/trainer_overhead.py                # CPU: c1 on synthetic 32×32 images
    python bench/trainer_overhead.py --steps 100 --rounds 5

Both loops run one epoch per round, in alternating order, after one warm-up epoch each;
the ratio of the median epoch times is printed (target: ≤ 1.05). With CUDA it
also prints images/s of torchvision resnet50 at batch 256, bf16 autocast and
channels_last on synthetic data already on the GPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # torch's profiler (kineto) prints USDT/ERROR lines otherwise

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dist_train.assemble import build_trainer
from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.distributed import distributed
from dist_train.models import build_model
from dist_train.optim import Schedule, build_optimizer, build_scheduler
from dist_train.train_state import seed_everything


def minimal_epoch(model, loader, optimizer, scheduler, device) -> float:
    """The loop every tutorial shows: nothing but forward, backward, step."""
    model.train()
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def compare_on_cpu(steps: int, rounds: int, batch: int, width: int) -> None:
    overrides = [
        "data.dataset=synthetic",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        f"data.synthetic_train_size={batch * steps}",
        "data.synthetic_val_size=256",
        "model.name=c1",
        f"model.width={width}",
        f"train.epochs={rounds + 1}",
        "train.log_every=20",
        "schedule.name=cosine",
        "device=cpu",
    ]
    with tempfile.TemporaryDirectory() as out, distributed("cpu") as ctx:
        cfg = load_config(None, [*overrides, f"out_dir={out}", "name=bench"])
        with contextlib.redirect_stdout(io.StringIO()):  # the run's start-up lines: only the figures are printed
            trainer = build_trainer(cfg, ctx)

        seed_everything(cfg.seed)
        data = build_datasets(cfg.data)
        model = build_model(cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width)
        loader = DataLoader(data.train, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, Schedule.from_config(cfg.schedule, len(loader), cfg.train.epochs))

        trainer_times, minimal_times = [], []
        for epoch in range(rounds + 1):
            # Alternate which loop goes first (ABBA) so neither always runs on warm caches.
            if epoch % 2:
                minimal_seconds = minimal_epoch(model, loader, optimizer, scheduler, ctx.device)
                trainer_seconds = trainer.train_epoch(epoch).seconds
            else:
                trainer_seconds = trainer.train_epoch(epoch).seconds
                minimal_seconds = minimal_epoch(model, loader, optimizer, scheduler, ctx.device)
            if epoch:  # the first round warms up allocators and caches
                trainer_times.append(trainer_seconds)
                minimal_times.append(minimal_seconds)
        trainer.monitor.close()

    trainer_median, minimal_median = statistics.median(trainer_times), statistics.median(minimal_times)
    print(
        f"CPU, c1 width {width}, batch {batch}, {steps} steps/epoch, {rounds} rounds, {torch.get_num_threads()} threads"
    )
    print(f"  minimal loop : {minimal_median:.3f} s/epoch  ({batch * steps / minimal_median:.0f} img/s)")
    print(f"  dist_train   : {trainer_median:.3f} s/epoch  ({batch * steps / trainer_median:.0f} img/s)")
    print(f"  ratio trainer/minimal = {trainer_median / minimal_median:.3f}  (target <= 1.05)")


def resnet50_on_gpu(steps: int = 50, batch: int = 256) -> None:
    """Training throughput of torchvision resnet50, bf16 autocast, channels_last, data on the GPU."""
    import torchvision

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50(num_classes=1000).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    print(
        f"GPU {torch.cuda.get_device_name()}: resnet50 batch {batch} bf16 channels_last: "
        f"{batch * steps / seconds:.0f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    parser.add_argument("--rounds", type=int, default=6, help="timed epochs per loop")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32, help="c1 base width")
    args = parser.parse_args()
    compare_on_cpu(args.steps, args.rounds, args.batch, args.width)
    if torch.cuda.is_available():
        resnet50_on_gpu()
    else:
        print("no CUDA device: resnet50 GPU throughput not measured")


if __name__ == "__main__":
    main()
