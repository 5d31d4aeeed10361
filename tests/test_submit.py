"""The parts of ``dist-train submit`` that need no cluster: option parsing, checks, the requeue callable."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, assert_ok, path_without, run_cli, subprocess_env, write_sweep

from dist_train.config import Config, load_config
from dist_train.errors import CheckpointError, ConfigError, DataError
from dist_train.slurm import SlurmOptions, TrainJob, parse_sbatch_options, parse_time, prepare


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("1:30:00", 90), ("0:30:30", 31), ("2-00:00:00", 2880), ("1-6", 1800), ("45:00", 45)],
)
def test_slurm_time_formats(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "soon", "1:2:3:4", "0"])
def test_bad_time_is_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="bad --time"):
        parse_time(text)


def test_sbatch_options() -> None:
    assert parse_sbatch_options(["exclusive", "mail-type=END", "--gres=gpu:2"]) == {
        "exclusive": True,
        "mail-type": "END",
        "gres": "gpu:2",
    }
    with pytest.raises(ConfigError, match="bad --sbatch 'Bad Key=1'"):
        parse_sbatch_options(["Bad Key=1"])


def test_tasks_follow_gpus() -> None:
    assert SlurmOptions(nodes=2, gpus_per_node=8).world_size == 16
    assert SlurmOptions(nodes=3).world_size == 3
    assert SlurmOptions(tasks_per_node=2, gpus_per_node=4).ntasks_per_node == 2


def quickstart(tmp_path: Path, *extra: str) -> Config:
    return load_config(REPO / "configs" / "quickstart.yaml", [*TINY, f"out_dir={tmp_path}", *extra])


def test_prepare_makes_paths_absolute_and_checks_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    cfg = load_config(REPO / "configs" / "quickstart.yaml", [*TINY, "out_dir=rel", "data.root=data"])
    prepared = prepare(cfg, SlurmOptions(tasks_per_node=2))
    assert prepared.out_dir == str(tmp_path / "rel") and prepared.data.root == str(tmp_path / "data")
    with pytest.raises(ConfigError, match="does not divide by world size 3"):
        prepare(cfg, SlurmOptions(tasks_per_node=3))
    with pytest.raises(DataError, match=r"data\.root not found"):
        prepare(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root="nowhere")), SlurmOptions())


def test_prepare_refuses_resume_never_over_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "quickstart" / "checkpoints").mkdir(parents=True)
    (tmp_path / "quickstart" / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="resume=never"):
        prepare(quickstart(tmp_path, "resume=never"), SlurmOptions())
    with pytest.raises(ConfigError, match="resume checkpoint not found"):
        prepare(quickstart(tmp_path, "resume=/no/such.pt"), SlurmOptions())


def test_checkpoint_requeues_the_same_run_resuming(tmp_path: Path) -> None:
    """What submitit calls on preemption: the same run, now with resume=auto."""
    job = TrainJob(quickstart(tmp_path, "resume=never", "optim.lr=0.3"))
    delayed = job.checkpoint()
    requeued = delayed.function
    assert isinstance(requeued, TrainJob) and requeued.cfg.resume == "auto"
    assert dataclasses.replace(requeued.cfg, resume="never") == job.cfg


@pytest.mark.parametrize("field", ["nodes", "array_parallelism", "gpus_per_node", "mem_gb", "signal_delay_s"])
def test_impossible_allocations_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be at least"):
        SlurmOptions(**{field: -1})


NO_SLURM = {"PATH": path_without("srun", "sbatch", "sinfo")}
"""A laptop: no SLURM command on PATH, whatever this machine has."""


@pytest.mark.slow
def test_dry_run_of_a_gpu_job_needs_no_cluster(tmp_path: Path) -> None:
    """One task per GPU: 2 nodes × 4 GPUs is 8 ranks; nothing is submitted and nothing is written."""
    allocation = ["--nodes", "2", "--gpus-per-node", "4", "--setup", "module load cuda"]
    command = ["submit", "--config", "configs/quickstart.yaml", *allocation, "--dry-run", f"out_dir={tmp_path}/r"]
    result = run_cli(command, env=NO_SLURM)
    assert_ok(result)
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4"):
        assert line in result.stdout
    assert "#SBATCH --job-name=quickstart" in result.stdout  # named after the run
    assert f"out_dir: {tmp_path}/r" in result.stdout and not (tmp_path / "r").exists()
    renamed = run_cli([*command, "--job-name", "cifar-bs4k", "name=other"], env=NO_SLURM)
    assert_ok(renamed)
    assert "#SBATCH --job-name=cifar-bs4k" in renamed.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        "dist-train submit --config configs/quickstart.yaml --tasks-per-node 2 --dry-run",
        "python slurm/submit.py --config configs/quickstart.yaml --nodes 2 --gpus-per-node 4 --dry-run",
    ],
    ids=["dist-train", "slurm-submit-py"],
)
def test_readme_dry_runs_work_on_a_laptop(tmp_path: Path, command: str) -> None:
    """The README's dry runs, with no srun/sbatch/sinfo on PATH: the sbatch lines and the config, no traceback."""
    program, *args = command.split()
    executable = sys.executable if program == "python" else str(Path(sys.executable).parent / program)
    env = subprocess_env() | NO_SLURM
    result = subprocess.run(
        [executable, *args, f"out_dir={tmp_path}/r"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert_ok(result)
    assert "#SBATCH --signal=USR2@90" in result.stdout and "srun --unbuffered" in result.stdout
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_dry_run_needs_no_data_here(tmp_path: Path) -> None:
    """The README's cluster command, dry-run on a laptop: data.root is on the cluster's storage, not here."""
    command = "submit --config configs/cifar10_resnet20.yaml --nodes 2 --gpus-per-node 4 --time 4:00:00 --partition gpu"
    paths = [f"out_dir={tmp_path}/shared/runs", f"data.root={tmp_path}/shared/cifar"]
    result = run_cli([*command.split(), *paths, "--dry-run"], env=NO_SLURM)
    assert_ok(result)
    assert "#SBATCH --partition=gpu" in result.stdout and f"root: {tmp_path}/shared/cifar" in result.stdout
    assert not (tmp_path / "shared").exists()


@pytest.mark.slow
def test_sweep_dry_run_needs_no_cluster(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"optim.lr": [0.01, 0.1]})
    result = run_cli(["submit", "--sweep", str(path), "--nodes", "2", "--dry-run"], env=NO_SLURM)
    assert_ok(result)
    assert "#SBATCH --array=0-1%2" in result.stdout and "#SBATCH --nodes=2" in result.stdout
    assert "#SBATCH --job-name=grid" in result.stdout  # the job array is named after the sweep
    assert not (tmp_path / "runs").exists()
