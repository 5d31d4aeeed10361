"""The run directory's lock and the config comparison, in process (the end-to-end cases are in test_bad_input.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dist_train.config import load_config, to_dict
from dist_train.rundir import LOCK, RunLock, RunLockedError, config_changes, current_job, process_stat


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_lock(run_dir: Path, **holder: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fields = {"host": socket.gethostname(), "pid": dead_pid(), "started": time.time(), "process_start": "", "job": ""}
    (run_dir / LOCK).write_text(json.dumps(fields | holder))


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lock = RunLock.acquire(run_dir)
    holder = json.loads((run_dir / LOCK).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match=f"is in use by another run \\(pid {os.getpid()} on host"):
        RunLock.acquire(run_dir)
    lock.release()
    assert not run_dir.exists()  # created by the run and left empty: removed again


def test_a_restarted_attempt_of_the_same_job_takes_its_lock_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert current_job() == "slurm:4711"
    write_lock(tmp_path, job="slurm:4711")  # the requeued job's earlier attempt, killed holding it
    lock = RunLock.acquire(tmp_path)
    assert "took over the run lock of an earlier attempt of this job" in lock.note
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists() and tmp_path.exists()


def test_another_jobs_dead_lock_is_reported_not_taken(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4712")
    write_lock(tmp_path, job="slurm:4711")
    with pytest.raises(RunLockedError, match=f"stale lock.*is no longer running.*dist-train unlock {tmp_path}"):
        RunLock.acquire(tmp_path)


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    """The holder's pid now belongs to another process (this one): its start time tells them apart."""
    write_lock(tmp_path, pid=os.getpid(), process_start="1")
    with pytest.raises(RunLockedError, match="is no longer running"):
        RunLock.acquire(tmp_path)


def test_a_killed_holder_not_yet_reaped_is_not_alive(tmp_path: Path) -> None:
    """A SIGKILLed worker whose agent died with it is a zombie until init reaps it: its lock is stale."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        process.kill()
        deadline = time.monotonic() + 10
        while process_stat(process.pid)[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        write_lock(tmp_path, pid=process.pid)
        with pytest.raises(RunLockedError, match="is no longer running"):
            RunLock.acquire(tmp_path)
    finally:
        process.wait()


def test_config_changes_ignore_what_does_not_change_training() -> None:
    base = to_dict(load_config(None, ["optim.lr=0.1"]))
    free = to_dict(load_config(None, ["optim.lr=0.1", "train.log_every=3", "checkpoint.every_steps=5", "name=x"]))
    assert config_changes(base, free) == []
    changed = to_dict(load_config(None, ["optim.lr=0.2", "seed=3"]))
    assert config_changes(base, changed) == ["seed: 0 → 3", "optim.lr: 0.1 → 0.2"]


@pytest.mark.slow
def test_unlock_clears_only_a_stale_lock(tmp_path: Path) -> None:
    """``dist-train unlock``: a dead holder's lock goes; a live holder's stays, with one line naming it."""
    from conftest import run_cli

    write_lock(tmp_path / "dead")
    result = run_cli(["unlock", str(tmp_path / "dead"), str(tmp_path / "never")])
    assert result.returncode == 0, result.stderr
    assert "removed the stale lock of pid" in result.stdout and f"{tmp_path / 'never'}: not locked" in result.stdout
    assert not (tmp_path / "dead" / LOCK).exists()
    write_lock(tmp_path / "live", pid=os.getpid())
    result = run_cli(["unlock", str(tmp_path / "live")])
    assert result.returncode == 1 and f"is in use by another run (pid {os.getpid()}" in result.stderr
    assert (tmp_path / "live" / LOCK).exists()
