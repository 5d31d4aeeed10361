"""Run under torchrun (2 nodes × 2 processes): the SWAP phases with what each rank saw recorded.

Writes ``OUT/rank{r}.pt``: parameters after phase 2 and phase 3, BN buffers after
phase 3, the collectives issued on the world group during phase 2, and the size
of the process group DDP used in phase 2.
"""

import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parameters_to_vector

from dist_train.config import load_config
from dist_train.distributed import all_gather_objects, distributed
from dist_train.swap import replica_layout, run_phase1, run_phase2, run_phase3

COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_object",
    "barrier",
    "broadcast_object_list",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
    "reduce",
)


@contextmanager
def record_world_collectives(calls: list):
    """Count every torch.distributed collective issued on the world group (group None or WORLD)."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def wrap(name, original):
        def recorded(*args, **kwargs):
            group = kwargs.get("group")
            if group is None or group is dist.group.WORLD:
                calls.append(name)
            return original(*args, **kwargs)

        return recorded

    for name, original in originals.items():
        setattr(dist, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def main(out: Path, overrides: list[str]) -> None:
    cfg = load_config(None, [*overrides, f"out_dir={out}"])
    with distributed("cpu") as ctx:
        replica_size = replica_layout(cfg, ctx.world_size)
        phase1 = run_phase1(cfg, ctx)
        calls: list[str] = []
        with record_world_collectives(calls):
            trainer, own = run_phase2(cfg, ctx, phase1, replica_size)
        after2 = parameters_to_vector(trainer.module.parameters()).detach().clone()
        ddp_group_size = dist.get_world_size(trainer.model.process_group)
        replicas = list({r["replica"]: r for r in all_gather_objects(own)}.values())
        run_phase3(cfg, ctx, trainer, replicas, phase1)
        after3 = parameters_to_vector(trainer.module.parameters()).detach().clone()
        buffers = {name: b.clone() for name, b in trainer.module.named_buffers()}
        is_bn = [isinstance(m, _BatchNorm) for m in trainer.module.modules()]
        torch.save(
            {
                "after2": after2,
                "after3": after3,
                "buffers": buffers,
                "world_calls": calls,
                "ddp_group_size": ddp_group_size,
                "bn_layers": sum(is_bn),
                "replica": own["replica"],
            },
            out / f"rank{ctx.rank}.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
