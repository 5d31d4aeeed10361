"""dist_train's training step against what users would otherwise run: a plain DDP loop and Lightning.

    python bench/peers.py                               # f1, c1, resnet20 at 1, 2, 4 ranks; 3 rounds
    python bench/peers.py --workloads c1 --ranks 2 4 --rounds 5
    python bench/peers.py --monitors                    # also each optional monitor's price

Every loop trains the same model on the same images (built and read by dist_train, then handed to each loop),
at the same global batch, with SGD (lr 0.1, momentum 0.9), for two epochs of the same steps, launched by the
same torchrun agent on the CPU (gloo) or, with CUDA, one GPU per rank (NCCL). The second epoch's images/s is
compared (the first warms up allocators, caches and DDP's buckets):

- ``plain``: the loop every tutorial shows: DistributedSampler, DataLoader over a pre-normalised
  TensorDataset, DDP with its defaults, forward, backward, step.
- ``lightning``: Lightning's Trainer (``strategy="ddp"``) over the same DataLoader, every extra switched off
  (no logger, progress bar, checkpoint or validation); skipped when pytorch-lightning is not installed.
- ``dist_train``: ``dist-train train`` with the recipe's defaults (the SIGTERM vote, rank health, exact
  bucket layout, metrics every ``train.log_every``), its default loader; ``dist_train tensor`` is the same
  with ``data.backend=tensor``. Gradient clipping and the diffusion monitor are off in both (the recipes
  switch them on; ``--monitors`` prices them, and rank health, one at a time).

Rounds are interleaved (each round runs every loop once, in a rotated order); per loop the median
images/s over the rounds is printed, with dist_train's ratio to the plain loop (median, and min-max over
the rounds) and the 1-minute load average before each round. Workloads: ``f1`` and ``c1`` on Fashion-MNIST
(in memory; ``--fashion-root`` or /usr/share/datasets/fashion-mnist) and ``resnet20`` on synthetic 32×32
images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "PEERS-RESULT "
"""The prefix of the one line a worker's rank 0 prints: its JSON result."""


@dataclass(frozen=True)
class Workload:
    recipe: str
    """The dist_train config the run starts from."""
    batch: int
    """Global batch (distinct samples per step)."""
    steps: int
    """Steps per epoch (the training set is cut to batch × steps images)."""
    overrides: tuple[str, ...] = ()


WORKLOADS = {
    "f1": Workload("configs/fashion_mnist_f1_sb.yaml", 256, 60),
    "c1": Workload("configs/fashion_mnist_c1_sb.yaml", 256, 40, ("model.width=16",)),
    "resnet20": Workload(
        "configs/cifar10_resnet20.yaml",
        64,
        12,
        ("data.dataset=synthetic", "data.synthetic_val_size=64", "data.num_workers=0"),
    ),
}

MONITORS = {
    "+ diffusion": ("diffusion.every_steps={recipe}",),
    "+ grad clipping": ("train.grad_clip_norm=5.0",),
    "- rank health": ("train.rank_health=false",),
    # The noise scale needs 2+ ranks here (no accumulation): at 1 rank it says so and measures nothing.
    "+ noise scale /20": ("noise_scale.every_steps=20",),
    "+ noise scale /1": ("noise_scale.every_steps=1",),
}
"""The optional monitors priced by ``--monitors``: dist_train with one of them switched from the base."""


def dist_train_overrides(workload: Workload, root: str) -> list[str]:
    """The config every loop is built from: the recipe at the bench's batch, steps and two epochs, no
    augmentation (the other loops do none), no clipping, no diffusion monitor."""
    images = workload.batch * workload.steps
    data = [f"data.train_subset={images}"]
    if "data.dataset=synthetic" in workload.overrides:
        data = [f"data.synthetic_train_size={images}"]
    elif root:
        data.append(f"data.root={root}")
    return [
        *workload.overrides,
        *data,
        f"data.batch_size={workload.batch}",
        "data.augment=false",
        "train.epochs=2",
        "train.eval_every=2",
        "train.grad_clip_norm=0",
        "diffusion.every_steps=0",
        "optim.lr=0.1",
        "optim.momentum=0.9",
        "optim.weight_decay=0",
        "schedule.name=constant",
        "regime.lr_rule=none",
    ]


# -- the workers (one per rank, under torchrun) ------------------------------------------------------------


def worker(loop: str, recipe: str, overrides: list[str]) -> None:
    """Train two epochs with ``loop`` (plain or lightning); rank 0 prints the second epoch's images/s."""
    import torch
    import torch.distributed as dist

    from dist_train.config import load_config
    from dist_train.data import build_datasets
    from dist_train.models import build_model

    cfg = load_config(recipe, overrides)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg.data)
    samples = [data.train[i] for i in range(len(data.train))]  # pre-normalised once, before any timing
    images, labels = torch.stack([image for image, _ in samples]), torch.as_tensor([label for _, label in samples])
    dataset = torch.utils.data.TensorDataset(images, labels)
    model = build_model(cfg.model.name, data.num_classes, data.in_channels, data.image_size, cfg.model.width)
    per_rank = cfg.data.batch_size // world
    if loop == "plain":
        seconds = plain_loop(model, dataset, per_rank, device, world, rank)
    else:
        seconds = lightning_loop(model, dataset, per_rank, world, rank, cuda)
    if rank == 0:
        print(MARK + json.dumps({"images_per_s": per_rank * world * (len(dataset) // (per_rank * world)) / seconds}))
    if dist.is_initialized():
        dist.destroy_process_group()


def plain_loop(model, dataset, per_rank: int, device, world: int, rank: int) -> float:
    """The tutorial loop for two epochs; the second epoch's seconds (from a barrier to a barrier)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model = model.to(device)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, drop_last=True)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seconds = 0.0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        sync(world, device)
        start = time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        sync(world, device)
        seconds = time.perf_counter() - start
    return seconds


def sync(world: int, device) -> None:
    """Wait for the device and every rank."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()


def lightning_loop(model, dataset, per_rank: int, world: int, rank: int, cuda: bool) -> float:
    """Lightning's Trainer for two epochs; the second epoch's seconds (from a barrier to a barrier)."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_index):
            images, labels = batch
            return F.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.start, self.seconds = 0.0, 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            trainer.strategy.barrier()
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            if cuda:
                torch.cuda.synchronize()
            trainer.strategy.barrier()
            self.seconds = time.perf_counter() - self.start

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, drop_last=True)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True)
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(Module(), loader)
    return timer.seconds


# -- the driver ----------------------------------------------------------------------------------------------


def launch(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    from dist_train.local_launch import local_torchrun

    env = dict(os.environ, PYTHONPATH=str(REPO), KINETO_LOG_LEVEL="6", PYTHONWARNINGS="ignore")
    return subprocess.run([*local_torchrun(nproc), *args], cwd=REPO, env=env, capture_output=True, text=True)


def run_peer(loop: str, nproc: int, recipe: str, overrides: list[str]) -> float:
    result = launch(nproc, [__file__, "--worker", loop, "--recipe", recipe, *overrides])
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARK)]
    if result.returncode or not lines:
        raise SystemExit(f"{loop} at {nproc} rank(s) failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[0][len(MARK) :])["images_per_s"]


def run_dist_train(nproc: int, recipe: str, overrides: list[str], out: str, name: str) -> float:
    result = launch(
        nproc, ["-m", "dist_train", "train", "--config", recipe, *overrides, f"out_dir={out}", f"name={name}"]
    )
    if result.returncode:
        raise SystemExit(f"dist_train at {nproc} rank(s) failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/images_per_s"] for r in records if r.get("epoch") == 2 and "train/images_per_s" in r)


def loops(workload: Workload, monitors: bool, lightning: bool) -> dict[str, list[str]]:
    """Each loop by name, with the overrides a dist_train loop adds to the base (empty for the peers)."""
    names = {"plain": [], "dist_train": [], "dist_train tensor": ["data.backend=tensor"]}
    if lightning:
        names["lightning"] = []
    if monitors:
        recipe_interval = diffusion_interval(workload.recipe)
        for name, extra in MONITORS.items():
            names[f"dist_train {name}"] = [e.format(recipe=recipe_interval) for e in extra]
    return names


def diffusion_interval(recipe: str) -> int:
    """The diffusion monitor's interval in ``recipe`` (its default there), else 20."""
    from dist_train.config import load_config

    return load_config(recipe, []).diffusion.every_steps or 20


def bench(name: str, workload: Workload, nproc: int, rounds: int, monitors: bool, root: str) -> None:
    lightning = has_lightning()
    base = dist_train_overrides(workload, root)
    variants = loops(workload, monitors, lightning)
    order = list(variants)
    results: dict[str, list[float]] = {loop: [] for loop in order}
    loads = []
    with tempfile.TemporaryDirectory() as out:
        for round_index in range(rounds):
            loads.append(os.getloadavg()[0])
            shift = round_index % len(order)
            for loop in order[shift:] + order[:shift]:
                if loop in ("plain", "lightning"):
                    value = run_peer(loop, nproc, workload.recipe, base)
                else:
                    overrides = [*base, *variants[loop]]
                    run_name = f"round{round_index}-{order.index(loop)}"
                    value = run_dist_train(nproc, workload.recipe, overrides, out, run_name)
                results[loop].append(value)
    print(
        f"\n{name}: batch {workload.batch}, {workload.steps} steps/epoch, {nproc} rank(s), {rounds} rounds, "
        f"load before each round {', '.join(f'{v:.2f}' for v in loads)}"
    )
    print(f"  {'loop':<28} {'images/s':>9}   {'/ plain (min-max)':<22} {'/ lightning':>11}")
    for loop in order:
        ratios = [a / b for a, b in zip(results[loop], results["plain"], strict=True)]
        spread = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        versus = ""
        if lightning:
            versus = f"{statistics.median(a / b for a, b in zip(results[loop], results['lightning'], strict=True)):.3f}"
        print(f"  {loop:<28} {statistics.median(results[loop]):>9.0f}   {spread:<22} {versus:>11}")


def has_lightning() -> bool:
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every loop once)")
    parser.add_argument("--monitors", action="store_true", help="also price the diffusion monitor, clipping, health")
    parser.add_argument("--fashion-root", default="", help="the Fashion-MNIST IDX folder (default: the apt one)")
    parser.add_argument("--worker", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        worker(args.worker, args.recipe, overrides)
        return
    if not has_lightning():
        print("pytorch-lightning is not installed: its column is skipped (pip install pytorch-lightning)")
    for name in args.workloads:
        for nproc in args.ranks:
            bench(name, WORKLOADS[name], nproc, args.rounds, args.monitors, args.fashion_root)


if __name__ == "__main__":
    main()
