"""Cost of SWAP phase 3 (average the replicas' weights, recompute BN statistics) against one phase-1 epoch.

    python bench/swap_allreduce.py                       # 4 gloo processes on CPU, both models
    python bench/swap_allreduce.py --procs 2 --images 0.5 --repeats 1
    python bench/swap_allreduce.py --models resnet20

Run plainly, the script re-executes itself under
``python -m torch.distributed.run --nproc-per-node=PROCS ... bench/swap_allreduce.py --worker``
with ``OMP_NUM_THREADS=1`` (one thread per process: several processes share a small CPU).

For each model the same synthetic training set (a TensorDataset of random images and random labels, built
from a fixed seed on every rank) is used for both measurements:

1. one phase-1 epoch: DDP over all ranks, SGD + cross-entropy, DistributedSampler shards, the whole
   training set (global batch 128 for resnet20, 32 for resnet50);
2. phase 3, as ``dist_train.swap.run_phase3`` does it: ``average_parameters`` (one all-reduce of the
   flattened parameters, also timed on its own), then ``recompute_bn`` over ``--bn-batches`` shuffled
   training micro-batches per rank (default: ``swap.bn_recompute_batches``; 0 = each rank's whole shard,
   which is what phase 3 did before the bound). The whole-shard recompute is timed too, for comparison.

The bound matters where an epoch is long: the last figure puts the measured costs (seconds per training step,
per BN batch, for the average) at the length of an ImageNet epoch (``--epoch-images``), where recomputing over
the whole set would cost about a third of an epoch.

Every timed region starts after a ``dist.barrier()``; a barrier follows it, and the time reported is the
maximum over ranks. After a few untimed warm-up steps, epoch and phase 3 alternate ``--repeats`` times and
the medians are printed, with the ratio phase 3 / epoch.

resnet20 is the CIFAR ResNet-20 on 32x32 images; resnet50 is torchvision's ResNet-50 (1000 classes) on
64x64 images instead of 224x224, to keep the CPU run short. At 224x224 the compute per image (the epoch's
and the BN pass's) grows about 12x while the all-reduces stay the same size, so the averaging's share of
phase 3 would be smaller there.

The machine's load matters: with more processes than cores, the ranks time-share the CPU; run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dist_train.config import SwapConfig
from dist_train.distributed import distributed
from dist_train.local_launch import local_torchrun
from dist_train.models import build_model
from dist_train.swap import average_parameters, recompute_bn
from dist_train.train_state import seed_everything

REPO = Path(__file__).resolve().parents[1]
SEED = 0
WARMUP_STEPS = 2


@dataclass(frozen=True)
class Case:
    """One model to measure and the synthetic data it trains on."""

    name: str
    num_classes: int
    image_size: int
    images: int  # training-set size at --images 1
    batch: int  # global training batch
    note: str = ""


CASES = {
    "resnet20": Case("resnet20", 10, 32, 2048, 128),
    "resnet50": Case("resnet50", 1000, 64, 256, 32, note="64x64 instead of 224x224 to keep the CPU run short"),
}


@dataclass
class Timings:
    epoch: list[float]
    average: list[float]
    bn: list[float]
    phase3: list[float]
    bn_whole: list[float]


def synthetic_train_set(case: Case, size: int) -> TensorDataset:
    """The same random images and labels on every rank (fixed generator seed)."""
    generator = torch.Generator().manual_seed(SEED + case.image_size)
    images = torch.randn(size, 3, case.image_size, case.image_size, generator=generator)
    labels = torch.randint(0, case.num_classes, (size,), generator=generator)
    return TensorDataset(images, labels)


def max_over_ranks(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def train_steps(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, limit: int = 0) -> None:
    model.train()
    for index, (images, labels) in enumerate(loader):
        if limit and index == limit:
            break
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def timed_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """One phase-1 epoch over the whole training set; the slowest rank's seconds."""
    loader.sampler.set_epoch(epoch)
    dist.barrier()
    start = time.perf_counter()
    train_steps(model, loader, optimizer)
    elapsed = time.perf_counter() - start
    dist.barrier()
    return max_over_ranks([elapsed])[0]


def timed_phase3(
    module: nn.Module, bn_loader: DataLoader, device: torch.device, batches: int
) -> tuple[float, float, float]:
    """average_parameters then recompute_bn over ``batches`` batches (0: all); the slowest rank's seconds for
    (average, BN, both)."""
    dist.barrier()
    start = time.perf_counter()
    average_parameters(module)
    averaged = time.perf_counter()
    recompute_bn(module, islice(bn_loader, batches or None), device)
    end = time.perf_counter()
    dist.barrier()
    average, bn, total = max_over_ranks([averaged - start, end - averaged, end - start])
    return average, bn, total


def measure(
    case: Case,
    scale: float,
    repeats: int,
    rank: int,
    world: int,
    device: torch.device,
    bn_batches: int,
    epoch_images: int,
) -> str:
    micro = case.batch // world
    size = max(case.batch, round(case.images * scale) // case.batch * case.batch)
    data = synthetic_train_set(case, size)
    seed_everything(SEED)
    model = build_model(case.name, case.num_classes, 3, case.image_size, 0).to(device)
    params = sum(p.numel() for p in model.parameters())
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=SEED)
    train_loader = DataLoader(data, batch_size=micro, sampler=sampler, drop_last=True)
    bn_batch = micro  # phase 3 recomputes in training micro-batches, shuffled, sharded like training
    bn_sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=SEED + 1)
    bn_loader = DataLoader(data, batch_size=bn_batch, sampler=bn_sampler, drop_last=True)
    used = min(bn_batches or len(bn_loader), len(bn_loader))

    # Warm-up (untimed): DDP's first iterations build its buckets; allocators and kernels warm up.
    train_steps(ddp, train_loader, optimizer, limit=WARMUP_STEPS)
    with torch.no_grad():
        model.train()
        model(next(iter(bn_loader))[0])

    timings = Timings([], [], [], [], [])
    for repeat in range(repeats):
        timings.epoch.append(timed_epoch(ddp, train_loader, optimizer, repeat + 1))
        # The module itself, not the DDP wrapper: DDP would copy rank 0's BN buffers at each forward.
        bn_sampler.set_epoch(repeat)
        average, bn, total = timed_phase3(model, bn_loader, device, used)
        timings.average.append(average)
        timings.bn.append(bn)
        timings.phase3.append(total)
        timings.bn_whole.append(timed_phase3(model, bn_loader, device, 0)[1])
        if rank == 0:
            print(
                f"  [{case.name} run {repeat + 1}/{repeats}] epoch {timings.epoch[-1]:.2f} s, average "
                f"{average:.4f} s, BN recompute {bn:.2f} s ({used} batches; whole shard {timings.bn_whole[-1]:.2f} s)",
                flush=True,
            )

    epoch, average, bn, phase3, whole = (
        statistics.median(t) for t in (timings.epoch, timings.average, timings.bn, timings.phase3, timings.bn_whole)
    )
    note = f"; {case.note}" if case.note else ""
    # The same measured costs at the length of an ImageNet epoch (the bound matters where epochs are long).
    steps_at_scale = epoch_images // case.batch
    at_scale = (average + min(bn_batches or steps_at_scale, steps_at_scale) * bn / used) / (
        steps_at_scale * epoch / len(train_loader)
    )
    return (
        f"{case.name} ({params / 1e6:.2f}M params, {size} images {case.image_size}x{case.image_size}, "
        f"{world} gloo processes{note}): epoch {epoch:.2f} s (batch {case.batch}, {len(train_loader)} steps) | "
        f"average {average:.4f} s | BN recompute {bn:.2f} s ({used} of {len(bn_loader)} batches of {bn_batch}/rank) | "
        f"phase 3 / epoch = {phase3 / epoch:.3f} (recomputing over the whole shard: {(average + whole) / epoch:.3f}); "
        f"at {epoch_images} images per epoch, same costs per step and per BN batch: {at_scale:.3f}"
    )


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    with distributed("cpu", "gloo") as ctx:
        if ctx.world_size < 2:
            raise SystemExit("run under torchrun with at least 2 processes (or without --worker to launch it)")
        if ctx.is_primary:
            print(
                f"SWAP phase 3 vs one phase-1 epoch: {ctx.world_size} gloo processes on CPU, "
                f"{torch.get_num_threads()} thread each, median of {args.repeats} run(s)",
                flush=True,
            )
        lines = [
            measure(
                CASES[name],
                args.images,
                args.repeats,
                ctx.rank,
                ctx.world_size,
                ctx.device,
                args.bn_batches,
                args.epoch_images,
            )
            for name in args.models
        ]
        if ctx.is_primary:
            print("\n".join(lines), flush=True)


def launch(args: argparse.Namespace) -> int:
    """Re-execute this script under torchrun with ``--procs`` single-threaded workers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [
        *local_torchrun(args.procs),
        str(Path(__file__).resolve()),
        *sys.argv[1:],
        "--worker",
    ]
    return subprocess.run(cmd, env=env, check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=4, help="processes (gloo ranks) to launch")
    parser.add_argument("--images", type=float, default=1.0, help="scale of the training sets (2048 and 256 images)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epoch + phase 3 runs per model (median)")
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument(
        "--bn-batches",
        type=int,
        default=SwapConfig().bn_recompute_batches,
        help="BN-recompute batches per rank (default: swap.bn_recompute_batches; 0 = the whole shard)",
    )
    parser.add_argument(
        "--epoch-images",
        type=int,
        default=1_281_167,
        help="epoch length for the extrapolated ratio (default: ImageNet-1k's training set)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in args.models:
        if CASES[name].batch % args.procs:
            parser.error(f"--procs {args.procs} does not divide {name}'s global batch {CASES[name].batch}")
    if args.worker or "LOCAL_RANK" in os.environ:
        worker(args)
    else:
        sys.exit(launch(args))


if __name__ == "__main__":
    main()
