"""The built wheel carries the recipes: installed into a fresh environment (reusing this one's torch), the
quickstart runs by name from an empty directory with no checkout on the path."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, assert_ok

pytestmark = pytest.mark.slow


def test_wheel_runs_the_quickstart_from_an_empty_directory(tmp_path: Path) -> None:
    wheels, env_dir, empty = tmp_path / "wheels", tmp_path / "env", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", ".", "-w", str(wheels)]
    assert_ok(subprocess.run(build, cwd=REPO, capture_output=True, text=True, timeout=300))
    (wheel,) = wheels.glob("dist_train-*.whl")
    assert_ok(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], capture_output=True))
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True
    )
    # torch and the other dependencies come from this environment's site-packages (a plain path: its .pth files,
    # among them the checkout's editable install, are not run).
    (Path(site.stdout.strip()) / "reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", str(python), "install", "--no-deps", "--ignore-installed", "--quiet", str(wheel)]
    assert_ok(subprocess.run(install, capture_output=True, text=True, timeout=300))
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HOME": str(tmp_path),
    }
    where = subprocess.run(
        [python, "-c", "import dist_train; print(dist_train.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    listing = subprocess.run(["dist-train", "recipes"], cwd=empty, env=env, capture_output=True, text=True)
    assert_ok(listing)
    assert "quickstart" in listing.stdout
    short = ["train.epochs=1", "data.synthetic_train_size=256", "data.synthetic_val_size=128"]
    run = subprocess.run(
        ["dist-train", "train", "--config", "quickstart", *short],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(run)
    assert "done: val acc" in run.stdout and (empty / "runs" / "quickstart" / "summary.json").is_file()
