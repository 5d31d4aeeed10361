"""Run under torchrun: per-rank ghost statistics under DDP, then the cross-rank buffer average.

Writes ``OUT/rank{r}.pt`` with each rank's BN buffers before and after ``average_bn_buffers``.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_train.nn.ghost_bn import average_bn_buffers, convert_to_ghost_bn
from dist_train.trainer import ddp_buffer_sync


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
    torch.save({"before": before, "after": after, "weights": weights}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
