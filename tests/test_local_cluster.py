"""``slurm/local_cluster.sh stop`` stops only the daemons the script started, by the pids it recorded.

The daemons here are stand-ins (copies of ``sleep`` named ``slurmd``, ``slurmctld`` and ``munged``, so that
the kernel reports those program names) with their pid files in a state directory of the test's own: the
cluster that other tests use is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

CLUSTER_SH = REPO / "slurm" / "local_cluster.sh"


def daemon(bin_dir: Path, program: str) -> int:
    """The pid of a detached process (not this one's child, like a real daemon) whose program is ``program``."""
    path = bin_dir / program
    if not path.exists():
        shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
    started = subprocess.run(["bash", "-c", f"{path} 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    return int(started.stdout)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="local_cluster.sh stop needs root")
def test_stop_kills_only_the_daemons_it_recorded(tmp_path: Path) -> None:
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    recorded = {"slurmd-node0.pid": "slurmd", "slurmctld.pid": "slurmctld", "munged.pid": "munged"}
    ours = {name: daemon(bin_dir, program) for name, program in recorded.items()}
    foreign_munged = daemon(bin_dir, "munged")  # running, not started by the script: left alone
    reused = daemon(bin_dir, "sleep")  # a pid file whose pid now belongs to another program
    for name, pid in ours.items():
        (state / name).write_text(f"{pid}\n")
    (state / "slurmd-node1.pid").write_text(f"{reused}\n")
    try:
        env = {**os.environ, "SLURM_STATE_DIR": str(state), "LOCAL_NODES_NAME": f"none{os.getpid()}"}
        result = subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert all(wait_gone(pid) for pid in ours.values())
        assert alive(foreign_munged) and alive(reused)
        assert not (state / "munged.pid").exists()
    finally:
        for pid in (*ours.values(), foreign_munged, reused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
