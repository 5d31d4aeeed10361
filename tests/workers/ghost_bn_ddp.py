"""Run under torchrun: per-rank ghost statistics under DDP, then the cross-rank buffer average.

Writes ``OUT/rank{r}.pt`` with each rank's BN buffers before and after ``average_bn_buffers``.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_train.assemble import build_trainer
from dist_train.config import load_config
from dist_train.distributed import DistContext
from dist_train.nn.bn_buffers import average_bn_buffers
from dist_train.nn.ghost_bn import convert_to_ghost_bn
from dist_train.parallel import ddp_buffer_sync


def trainer_syncs_buffers(out: Path, ghost_batch_size: int) -> tuple[bool, bool]:
    """Whether the Trainer's DDP copies rank 0's buffers each forward, for plain or Ghost BN; and whether
    building it kept this rank's own BN statistics (as a resume restores them)."""
    cfg = load_config(
        None,
        [
            "data.synthetic_train_size=64",
            "data.batch_size=16",
            "data.num_workers=0",
            "model.width=4",
            f"bn.ghost_batch_size={ghost_batch_size}",
            f"out_dir={out}",
            f"name=ghost{ghost_batch_size}",
        ],
    )
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), 0, torch.device("cpu"), "gloo")
    trainer = build_trainer(cfg, ctx)
    trainer.monitor.close()
    own = next(b for name, b in trainer.module.named_buffers() if name.endswith("running_mean"))
    own.fill_(float(dist.get_rank() + 1))  # as a resume restores each rank's own statistics
    ddp = trainer.model
    kept = bool(torch.all(own == dist.get_rank() + 1))
    return bool(getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))), kept


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same model on every rank
    model = convert_to_ghost_bn(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)),
        ghost_batch_size=4,
    )
    model(torch.randn(8, 3, 6, 6))  # materialise the lazy layer before DDP
    ddp = DistributedDataParallel(model, **ddp_buffer_sync(False))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        images = torch.randn(16, 3, 6, 6, generator=generator) * (1 + rank) + rank
        loss = ddp(images).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bn = model[1]
    before = {"mean": bn.running_mean.clone(), "var": bn.running_var.clone()}
    average_bn_buffers(model)
    after = {"mean": bn.running_mean.clone(), "var": bn.running_var.clone()}
    weights = model[0].weight.detach().clone()
    (plain, plain_kept), (ghost, ghost_kept) = trainer_syncs_buffers(out, 0), trainer_syncs_buffers(out, 4)
    syncs, kept = {"plain": plain, "ghost": ghost}, {"plain": plain_kept, "ghost": ghost_kept}
    torch.save(
        {"before": before, "after": after, "weights": weights, "syncs": syncs, "kept": kept}, out / f"rank{rank}.pt"
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
