"""The commands that answer at once import only what they need: ``--help``, ``recipes``, ``plan`` and
``submit --dry-run`` no torch at all (each command in a fresh process; the wall times are bench/cli_speed.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, path_without, subprocess_env

pytestmark = pytest.mark.slow

RUN_AND_LIST = """
import contextlib, io, json, sys
from dist_train.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(sys.argv[1:])
    except SystemExit as stop:  # --help
        status = stop.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""
"""Run ``dist-train ARGS`` in this process, then print its exit status and every module it imported."""

HEAVY = ("torch", "torchvision", "nvidia.dali", "submitit")
"""What neither ``--help`` nor ``recipes`` needs."""
TORCH = ("torch", "torchvision", "nvidia.dali")
"""What ``plan`` and a dry run need only for a data set whose size must be counted by loading (a plug-in's)."""


def imported(*args: str) -> list[str]:
    """The modules that ``dist-train ARGS`` imports, run in a fresh process without SLURM on PATH."""
    env = subprocess_env() | {"PATH": path_without("srun", "sbatch", "sinfo")}
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert_ok(result)
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["status"] == 0, result.stderr
    return answer["modules"]


def loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that are ``packages`` or inside them."""
    return [name for name in modules if name in packages or name.startswith(tuple(f"{p}." for p in packages))]


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["recipes"]], ids=["help", "submit", "recipes"])
def test_help_and_recipes_import_no_torch(args: list[str]) -> None:
    assert not loaded(imported(*args), HEAVY)


@pytest.mark.parametrize(
    "config",
    ["quickstart.yaml", "fashion_mnist_c1_lb_lr_gbn_ra.yaml", "cifar10_resnet20.yaml"],
    ids=["quickstart", "fashion-mnist-ra", "cifar10"],
)
def test_plan_imports_no_torch(config: str) -> None:
    assert not loaded(imported("plan", "--config", f"configs/{config}"), TORCH)


def test_a_swap_plan_imports_no_torch() -> None:
    assert not loaded(imported("plan", "--config", "configs/quickstart.yaml", "swap.enabled=true"), TORCH)


def test_a_dry_run_imports_no_torch(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    args = ["submit", "--config", "configs/quickstart.yaml", "--dry-run", f"out_dir={tmp_path}/r"]
    modules = imported(*args)
    assert "submitit" in modules and not loaded(modules, TORCH)
