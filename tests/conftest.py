"""Helpers for tests that start real processes (torchrun, gloo on CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dist_train.local_launch import free_port, local_torchrun  # noqa: F401 - free_port is shared with the tests
from dist_train.rundir import process_stat

REPO = Path(__file__).resolve().parents[1]
MNIST_T10K = REPO.parent / "shared" / "data" / "mnist-t10k"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install -y dataset-fashion-mnist

# A run small enough for CPU tests: synthetic images, a narrow CNN, 2 epochs.
TINY = [
    "data.dataset=synthetic",
    "data.num_workers=0",
    "data.batch_size=32",
    "data.synthetic_train_size=512",
    "data.synthetic_val_size=128",
    "model.name=c1",
    "model.width=8",
    "train.epochs=2",
    "train.log_every=4",
    "schedule.name=step",
    "schedule.milestones=[1.5]",
    "optim.lr=0.05",
]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    return env


def torchrun_cmd(nproc: int, *extra: str) -> list[str]:
    return local_torchrun(nproc, *extra)


def run_cli(
    args: list[str], nproc: int = 1, timeout: float = 240, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``dist-train ARGS`` alone (nproc=1) or under torchrun with ``nproc`` processes (``env`` adds variables)."""
    prefix = torchrun_cmd(nproc) if nproc > 1 else [sys.executable]
    cmd = [*prefix, "-m", "dist_train", *args]
    environment = subprocess_env() | (env or {})
    return subprocess.run(cmd, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def path_without(*programs: str) -> str:
    """This PATH less every directory that holds one of ``programs`` (a machine without them)."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if f and not any((Path(f) / p).exists() for p in programs))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def kill_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL ``process`` (a session leader: start_new_session=True), its group and every descendant, and wait
    until all have died. torchrun's agent starts each worker in a session of its own, so killing the agent's
    group alone would leave the workers training."""
    doomed = [process.pid, *_descendants(process.pid)]
    os.killpg(process.pid, signal.SIGKILL)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while any(_state(pid) not in ("", "Z", "X") for pid in doomed):
        assert time.monotonic() < deadline, f"processes of {process.pid} outlived SIGKILL by {timeout} s"
        time.sleep(0.01)


def _state(pid: int) -> str:
    fields = process_stat(pid)
    return fields[0] if fields else ""


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if fields := process_stat(entry.name):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def assert_cutout_squares(images: torch.Tensor, side: int) -> None:
    """``images``: normalised views of white images. Each view's only zeros (the same in every channel) form one
    cutout square of ``side``, clipped at the borders, at a random place."""
    zero = images == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    areas = zero[:, 0].flatten(1).sum(1)
    assert areas.max() == side * side and areas.min() > 0  # full squares inside, clipped ones at the borders
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)
    assert torch.equal(areas, rows.sum(1) * cols.sum(1))  # each zeroed region is one rectangle
    assert len({tuple(z.flatten().tolist()) for z in zero[:, 0]}) > 10  # at random places


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def dali() -> None:
    """Skip a DALI test where DALI is not installed, unless DIST_TRAIN_REQUIRE_DALI is set (CI)."""
    if not dali_available():
        if os.environ.get("DIST_TRAIN_REQUIRE_DALI"):
            pytest.fail("DALI is required here (DIST_TRAIN_REQUIRE_DALI) but nvidia.dali cannot be imported")
        pytest.skip("NVIDIA DALI is not installed (pip install -e '.[dali]')")


@pytest.fixture
def fashion_mnist() -> Path:
    """The real Fashion-MNIST files; skip where they are not installed, unless DIST_TRAIN_REQUIRE_FASHION_MNIST
    is set (CI)."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    missing = [n for n in names if not any((FASHION_MNIST / f"{n}{ext}").is_file() for ext in ("", ".gz"))]
    if missing:
        reason = f"Fashion-MNIST is not installed in {FASHION_MNIST} (apt-get install -y dataset-fashion-mnist)"
        if os.environ.get("DIST_TRAIN_REQUIRE_FASHION_MNIST"):
            pytest.fail(f"Fashion-MNIST is required here (DIST_TRAIN_REQUIRE_FASHION_MNIST) but {reason}")
        pytest.skip(reason)
    return FASHION_MNIST


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The TINY run, 2 processes, uninterrupted: what resumed and restarted runs must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli(["train", *TINY, f"out_dir={out}", "name=ref"], nproc=2)
    assert_ok(result)
    return out / "ref"


def slurm_available() -> str:
    """Empty when a SLURM controller answers here, else why not."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (sudo slurm/local_cluster.sh install && sudo slurm/local_cluster.sh start)"
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 or not result.stdout.split():
        return "no SLURM cluster answers here (sudo slurm/local_cluster.sh start)"
    return ""


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip a SLURM test where no cluster answers, unless DIST_TRAIN_REQUIRE_SLURM is set (CI)."""
    reason = slurm_available()
    if reason:
        if os.environ.get("DIST_TRAIN_REQUIRE_SLURM"):
            pytest.fail(f"SLURM is required here (DIST_TRAIN_REQUIRE_SLURM) but {reason}")
        pytest.skip(reason)


def tiny_overrides() -> dict[str, object]:
    """TINY as a sweep file's ``overrides`` mapping."""
    return {item.partition("=")[0]: yaml.safe_load(item.partition("=")[2]) for item in TINY}


def write_sweep(tmp_path: Path, grid: dict, name: str = "grid", **spec: object) -> Path:
    """A sweep file over TINY quickstart runs (``spec`` adds or replaces top-level keys); runs go to tmp_path/runs."""
    body = {
        "name": name,
        "config": str(REPO / "configs" / "quickstart.yaml"),
        "overrides": {key: value for key, value in tiny_overrides().items() if key not in grid}
        | {"out_dir": str(tmp_path / "runs")}
        | spec.pop("overrides", {}),
        "grid": grid,
        **spec,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path
