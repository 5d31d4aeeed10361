"""The one-line messages a failed process ends with, instead of a traceback.

``dist-train`` (:mod:`dist_train.cli`), a SLURM task (:mod:`dist_train.slurm`) and torchrun's agent
(:mod:`dist_train.torchrun`) all end here: an error of the user's input, of the machine or of another rank
is one line; a bug (:func:`failure_line` answers None) keeps its traceback. Torch-free.
"""

from __future__ import annotations

import os
import re
import signal
import traceback
from typing import TYPE_CHECKING

from dist_train.errors import DistTrainError, describe_os_error, one_line
from dist_train.stop import Terminated

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

TIMEOUT_CLOSED = "Application timeout caused pair closure"
"""gloo's error for an operation on a connection closed by the timeout of another operation."""
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def rank_prefix() -> str:
    """``[rank N] `` in a job of several processes, else nothing."""
    world = os.environ.get("WORLD_SIZE")
    return f"[rank {os.environ.get('RANK', '0')}] " if world and world != "1" else ""


def print_error(message: str) -> int:
    """Print ``dist-train: error: message`` and return the exit status 1; one write per line, so the lines of
    several ranks never interleave."""
    os.write(2, f"{rank_prefix()}dist-train: error: {message}\n".encode())
    return 1


def failure_line(error: Exception, timeout_s: float | None = None) -> str | None:
    """The one line that reports ``error``: the user's input, the machine or another rank; None for a bug
    (whose traceback is then shown). ``timeout_s``: the run's dist.timeout_s, where known."""
    if isinstance(error, DistTrainError | Terminated):
        return one_line(error)
    if isinstance(error, OSError):  # full disk, permission denied, read-only file system, ...
        return describe_os_error(error)
    if isinstance(error, MemoryError):
        return "out of memory in host RAM: lower data.batch_size or data.num_workers"
    if isinstance(error, RuntimeError):
        return resource_failure(error, timeout_s)
    return None


def resource_failure(error: RuntimeError, timeout_s: float | None = None) -> str | None:
    """One line for the runtime errors that are the machine's or another rank's doing, not a bug here
    (``timeout_s``: the run's dist.timeout_s, for the timeouts whose message does not say it)."""
    text = str(error)
    if "out of memory" in text.lower() or "can't allocate memory" in text:
        return _out_of_memory(text)
    timed_out = re.search(r"Timed out waiting (\d+)ms for (\w+)", text)
    if timed_out:  # gloo's own timeout names the wait
        within = f"{int(timed_out.group(1)) / 1000:g} s (dist.timeout_s)"
        what = f"the {timed_out.group(2)} of {_collective(error)}"
    elif TIMEOUT_CLOSED in text:  # a connection another operation's timeout closed (an all-reduce in flight)
        within = f"{timeout_s:g} s (dist.timeout_s)" if timeout_s else "dist.timeout_s"
        what = _collective(error)
    if timed_out or TIMEOUT_CLOSED in text:
        return (
            f"{_silent_peer()} stopped answering: no reply within {within} to {what}; that process hangs, "
            "was stopped or lost its node"
        )
    if any(marker in text for marker in PEER_LOST) or type(error).__name__ == "DistBackendError":
        return "lost contact with the other processes of the job (another rank failed or was killed: see its error)"
    return None


def _out_of_memory(text: str) -> str:
    """The line for an allocator's out-of-memory message (the GPU's or the host's), with the size it asked for."""
    where = "GPU" if "CUDA" in text else "host"
    found = re.search(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ \w+)", text)
    size = "" if not found else found.group(2) or f"{int(found.group(1)) / 2**30:.3g} GiB"
    return (
        f"out of {where} memory"
        + (f" (could not allocate {size})" if size else "")
        + ": lower data.batch_size (raise train.grad_accum_steps to keep the batch) or the data held in memory"
    )


def _silent_peer() -> str:
    """The rank this one waited for, where that is knowable (two ranks: the other one)."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    if world == "2" and rank in ("0", "1"):
        return f"rank {1 - int(rank)}"
    return "another rank" if world != "1" else "a peer"


def _collective(error: BaseException) -> str:
    """The torch.distributed operation that ``error`` came out of, e.g. ``all_reduce``."""
    frames = traceback.extract_tb(error.__traceback__)
    names = [frame.name for frame in frames if frame.filename.endswith("distributed_c10d.py")]
    if names:
        return names[0]
    called = {frame.name for frame in frames}
    if "backward" in called:
        return "the gradient all-reduce"
    return "DDP's broadcast of the model's buffers" if "_sync_buffers" in called else "a collective"


def workers_failed_line(error: ChildFailedError) -> str:
    """torchrun's line on the workers that failed: the first one, how, and how many in all (a worker that
    stopped cleanly on SIGTERM, exit status 143, is said to have stopped)."""
    rank, first = error.get_first_failure()
    killed = first.exitcode < 0
    stopped = first.exitcode == 128 + signal.SIGTERM
    how = f"killed by {first.signal_name()}" if killed else f"exit status {first.exitcode}"
    others = len(error.failures) - 1
    rest = f"; {others} other worker(s) stopped with it" if others else ""
    if stopped:
        return (
            f"torchrun: worker rank {rank} stopped by SIGTERM first ({how}, pid {first.pid}){rest}; its line is above"
        )
    said = "" if killed else "; its error is above"
    return f"torchrun: worker rank {rank} failed first ({how}, pid {first.pid}){rest}{said}"


def agent_stopped_line(signum: int) -> str:
    """torchrun's line when a signal stopped its agent (the workers report how they stopped themselves)."""
    return f"torchrun: stopped by {signal.Signals(signum).name}"
