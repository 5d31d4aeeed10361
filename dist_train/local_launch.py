"""Command lines for jobs on this machine: a free port, and a one-machine torchrun (no torch imported here).

The sweep runner, the benches and the tests start their processes with these.
"""

from __future__ import annotations

import socket
import sys


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for a rendezvous endpoint on this machine)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def local_torchrun(nproc: int, *args: str) -> list[str]:
    """The command line of a one-machine torchrun job of ``nproc`` processes (c10d rendezvous on a free port),
    through :mod:`dist_train.torchrun`: a failure ends in the workers' lines and one of torchrun's."""
    return [
        sys.executable,
        "-m",
        "dist_train.torchrun",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        *args,
    ]
