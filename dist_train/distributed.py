"""Where am I running, and the process group around it.

Reads the environment that torchrun (or SLURM via submitit, which exports the
same variables) sets up; with none of it, the run is a single process. NCCL is
used with CUDA, gloo on CPU. Collectives here are no-ops when running alone.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from dist_train.errors import ConfigError, DistTrainError, describe_os_error, one_line

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    group: dist.ProcessGroup | None = None
    """The process group this context trains over (None: the whole world); rank and
    world_size are this process's place within it."""
    host_group: dist.ProcessGroup | None = None
    """The ranks of ``group`` over gloo, for small host-side tensors, when ``group`` is NCCL's."""
    hosts: tuple[str, ...] = ()
    """The host name of every rank of the group, in rank order."""
    label: str = ""
    """What this context's console lines start with (``replica 1`` in SWAP phase 2; empty: nothing)."""
    restarts: int = 0
    """Restarts of the job so far: the most that any rank's launcher counted (torchrun agents on several
    nodes may count differently)."""

    @property
    def is_primary(self) -> bool:
        """Rank 0: the only process that writes logs, TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cpu_group(self) -> dist.ProcessGroup | None:
        """A group over this context's ranks that takes CPU tensors (``group`` itself unless it is NCCL's)."""
        return self.host_group if self.backend == "nccl" else self.group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _check_environment(rank: int, world_size: int, local_rank: int) -> None:
    """The job's environment makes sense (a launcher's variables set by hand are the usual culprit)."""
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size} do not describe a job")
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set: launch with torchrun or srun "
                "(see docs/many-gpus-and-nodes.md), not by setting RANK/WORLD_SIZE by hand"
            )


def restart_count() -> int:
    """How many times the job was restarted (torchrun elastic restarts or SLURM requeues)."""
    return max(_env_int("TORCHELASTIC_RESTART_COUNT", 0), _env_int("SLURM_RESTART_COUNT", 0))


def pick_device(preference: str, local_rank: int) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def pick_backend(preference: str, device: torch.device) -> str:
    if preference != "auto":
        if preference == "nccl" and device.type != "cuda":
            raise ConfigError("dist.backend=nccl needs CUDA devices; use dist.backend=gloo on CPU")
        return preference
    return "nccl" if device.type == "cuda" else "gloo"


SHARED_STORE_HINT = (
    "torchrun restarts across nodes need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment "
    "(launch/train.sh sets it): with the agent's shared store, agents that count their restarts differently "
    "wait for each other until dist.timeout_s"
)


def _agent_shares_store() -> bool:
    """Whether torchrun's agent serves the workers' store, the same one for all of its restarts."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _store_for_this_attempt(timeout: timedelta) -> dist.Store:
    """The env:// rendezvous store, holding only this start's keys.

    A store served by torchrun's agent lives through its ``--max-restarts`` restarts; without a
    prefix per restart, restarted gloo workers can read the addresses the killed workers published
    and fail to connect. The prefix is the agent's restart count, which is the same for every worker
    of one node; agents on several nodes may count differently (a restart that another node's
    failure causes is not counted), so there torchrun should give every restart a fresh store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: rank 0 serves it), which needs no prefix. SLURM jobs
    get a fresh store with every (re)start too.
    """
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    if not _agent_shares_store():
        return store
    if _env_int("RANK", 0) == 0 and _env_int("GROUP_WORLD_SIZE", 1) > 1 and _env_int("TORCHELASTIC_MAX_RESTARTS", 0):
        print(f"dist-train: warning: {SHARED_STORE_HINT}", file=sys.stderr, flush=True)
    return dist.PrefixStore(f"dist_train/attempt_{restart_count()}/", store)


@contextmanager
def distributed(device: str = "auto", backend: str = "auto", timeout_s: int = 600) -> Iterator[DistContext]:
    """Join the process group described by the environment; always leave it on exit.

    On an exception the group is destroyed before the exception propagates, so
    the peers' pending collectives fail fast instead of waiting for the timeout.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    _check_environment(rank, world_size, local_rank)
    torch_device = pick_device(device, local_rank)
    chosen = pick_backend(backend, torch_device)
    context = DistContext(
        rank, world_size, local_rank, torch_device, chosen, hosts=(socket.gethostname(),), restarts=restart_count()
    )
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend=chosen,
            store=_store_for_this_attempt(timeout),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=torch_device if torch_device.type == "cuda" else None,
        )
        if chosen == "nccl":  # every rank creates it, in the same order
            context = replace(context, host_group=dist.new_group(backend="gloo", timeout=timeout))
    try:
        if dist.is_initialized():
            places = all_gather_objects((socket.gethostname(), restart_count()))
            hosts, restarts = zip(*places, strict=True)  # type: ignore[arg-type]
            context = replace(context, hosts=tuple(hosts), restarts=max(restarts))
        yield context
        if dist.is_initialized():  # leave together: a rank that tears its group down while a peer still holds
            dist.barrier()  # its connections can die of SIGABRT at exit
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``group`` (default: all), in place, and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_gather_objects(obj: object, group: dist.ProcessGroup | None = None) -> list[object]:
    """Every rank's ``obj`` in ``group`` (default: all), in rank order."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(
    action: Callable[[], T], group: dist.ProcessGroup | None = None, undo: Callable[[T], None] | None = None
) -> T:
    """Run ``action`` on every rank of ``group``; if any rank failed (a DistTrainError or an OSError such as
    a full disk), every rank raises a one-line DistTrainError, and ranks that succeeded ``undo`` their result.

    Errors then reach every rank's console instead of one rank failing while its peers wait in the
    next collective. (A collective itself.)
    """
    result, error = None, None
    try:
        result = action()
    except DistTrainError as e:
        error = one_line(e)
    except OSError as e:
        error = describe_os_error(e)
    errors = all_gather_objects(error, group)
    if error is not None:
        raise DistTrainError(error)
    failed = next(((rank, message) for rank, message in enumerate(errors) if message is not None), None)
    if failed is not None:
        if undo is not None:
            undo(result)  # type: ignore[arg-type]
        raise DistTrainError(f"stopped because rank {failed[0]} failed: {failed[1]}")
    return result  # type: ignore[return-value]
