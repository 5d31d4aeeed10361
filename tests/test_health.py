"""Every rank's pace: the rule that names a straggler, and 2-rank torchrun jobs with one rank's data slowed,
one rank's compute slowed, one rank paused and no rank slow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, read_metrics, run_cli, subprocess_env, torchrun_cmd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_train.techniques.rank_health import RankStats


def stats(step_s: list[float], data_wait_s: list[float], sync_wait_s: list[float] | None = None) -> RankStats:
    n = len(step_s)
    values = {
        "step_s": step_s,
        "data_wait_s": data_wait_s,
        "sync_wait_s": sync_wait_s or [0.0] * n,
        "images_per_s": [100.0] * n,
        "peak_memory_gb": [0.5] * n,
    }
    return RankStats(values, [f"node{r // 2}" for r in range(n)])


def test_the_rank_the_others_wait_for_is_the_straggler() -> None:
    # Rank 3 waits 50 ms a step for data; the others wait about as long for it in the all-reduce.
    slow = stats([0.1] * 4, [0.001, 0.002, 0.001, 0.051], [0.05, 0.049, 0.05, 0.0])
    assert slow.stragglers() == [3]
    line = (
        "straggler: rank 3 on node1 waits 51 ms a step for data (the other ranks: 1 ms); the others wait for it,"
        " in steps of 100 ms"
    )
    assert slow.describe(3) == line
    # Rank 1 computes 40 ms a step longer (or was paused): its data wait is like the others'.
    busy = stats([0.1] * 2, [0.005, 0.005], [0.045, 0.005])
    assert busy.stragglers() == [1]
    assert busy.describe(1).startswith(
        "straggler: rank 1 on node0 computes (or stalls) 90 ms a step (the other ranks: 50"
    )
    assert stats([0.1] * 4, [0.001, 0.002, 0.001, 0.02], [0.02, 0.02, 0.02, 0.0]).stragglers() == []  # under 1/4 step
    assert stats([0.1] * 4, [0.04, 0.06, 0.04, 0.05]).stragglers() == []  # all load slowly: nobody waits for one
    assert stats([0.1], [0.09]).stragglers() == []
    # A few milliseconds in a fast step are noise, not a straggler (here 5 ms in 14 ms steps).
    assert stats([0.014] * 2, [0.008, 0.003], [0.0, 0.005]).stragglers() == []


def test_rank_scalars_per_rank_worst_and_spread() -> None:
    scalars = stats([0.1, 0.12], [0.001, 0.05], [0.05, 0.0]).scalars()
    assert scalars["ranks/data_wait_s/rank1"] == 0.05 and scalars["ranks/data_wait_s/worst"] == 0.05
    assert scalars["ranks/sync_wait_s/rank0"] == 0.05 and scalars["ranks/sync_wait_s/spread"] == 0.05
    assert scalars["ranks/step_s/spread"] == 0.12 - 0.1 and scalars["ranks/images_per_s/total"] == 200
    assert scalars["ranks/slowest_rank"] == 1 and scalars["ranks/peak_memory_gb/rank0"] == 0.5
    cpu = RankStats({**stats([0.1], [0.0]).values, "peak_memory_gb": [float("nan")]}, ["h"]).scalars()
    assert not any(tag.startswith("ranks/peak_memory_gb") for tag in cpu)  # not measured on a CPU


@pytest.mark.slow
def test_a_slow_rank_is_named_in_the_log_and_in_tensorboard(tmp_path) -> None:
    """2 ranks under torchrun; rank 1 reads its images 4 ms slower each (a data set on a slow disk, one node).
    Rank 0 names rank 1 and its host once; metrics.jsonl and TensorBoard hold both ranks' data waits."""
    args = [
        "train",
        "data.dataset=tests/workers/slow_rank_data.py:images",
        "data.kwargs.slow_rank=1",
        "data.kwargs.delay_s=0.004",
        "data.batch_size=32",
        "data.num_workers=0",
        "model.name=c1",
        "model.width=8",
        "train.epochs=1",
        "train.log_every=4",
        f"out_dir={tmp_path}",
        "name=slow",
    ]
    result = run_cli(args, nproc=2)
    assert_ok(result)
    named = [line for line in result.stdout.splitlines() if line.startswith("straggler:")]
    assert len(named) == 1 and named[0].startswith(f"straggler: rank 1 on {socket.gethostname()} waits "), named
    assert "for data" in named[0]
    run_dir = tmp_path / "slow"
    windows = [r for r in read_metrics(run_dir) if "ranks/data_wait_s/rank1" in r]
    assert [r["step"] for r in windows] == [4, 8, 12, 16]
    # 16 images a step on rank 1, 4 ms each: at least 64 ms a step waiting, rank 0 only for its images' decoding.
    assert all(r["ranks/data_wait_s/rank1"] >= max(0.064, 2 * r["ranks/data_wait_s/rank0"]) for r in windows)
    assert all(r["ranks/slowest_rank"] == 1 for r in windows)
    # Rank 0 waits for rank 1 in the collectives (DDP's buffer copy, the all-reduce): most of rank 1's wait.
    assert all(r["ranks/sync_wait_s/rank0"] >= 0.5 * r["ranks/data_wait_s/rank1"] for r in windows)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.value for e in events.Scalars("ranks/slowest_rank")] == [1.0] * 4
    assert all(e.value >= 0.064 for e in events.Scalars("ranks/data_wait_s/rank1"))
    assert {"ranks/step_s/rank0", "ranks/step_s/rank1", "ranks/images_per_s/total"} <= set(events.Tags()["scalars"])
    (text,) = events.Tensors("ranks/stragglers/text_summary")
    assert text.tensor_proto.string_val[0].decode() == named[0]


def slow_model_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """A 2-rank run of the model of tests/workers/slow_rank_model.py on quick in-memory images."""
    return [
        "train",
        "data.dataset=tests/workers/slow_rank_data.py:images",
        "data.kwargs.delay_s=0",
        "data.kwargs.train_size=1024",
        "model.name=tests/workers/slow_rank_model.py:build",
        "model.width=0",
        "data.batch_size=32",
        "data.num_workers=0",
        "train.log_every=8",
        f"out_dir={tmp_path}",
        f"name={name}",
        *extra,
    ]


def stragglers(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("straggler:")]


@pytest.mark.slow
def test_a_rank_slow_to_compute_is_named_and_a_healthy_run_names_none(tmp_path) -> None:
    """Rank 1's forward takes 30 ms longer (an overloaded host): every rank's step slows alike, and only the
    time each waits for the others tells them apart. The same run without the delay prints no straggler."""
    result = run_cli(slow_model_args(tmp_path, "slow", "train.epochs=1", "model.kwargs.delay_s=0.03"), nproc=2)
    assert_ok(result)
    (named,) = stragglers(result.stdout)
    assert named.startswith(f"straggler: rank 1 on {socket.gethostname()} computes (or stalls) "), named
    windows = [r for r in read_metrics(tmp_path / "slow") if "ranks/sync_wait_s/rank0" in r]
    assert len(windows) == 4 and all(r["ranks/slowest_rank"] == 1 for r in windows)
    assert all(r["ranks/sync_wait_s/rank0"] >= 0.025 for r in windows)  # rank 0 waits out rank 1's 30 ms
    healthy = run_cli(slow_model_args(tmp_path, "healthy", "train.epochs=3"), nproc=2)
    assert_ok(healthy)
    assert stragglers(healthy.stdout) == [], healthy.stdout


@pytest.mark.slow
def test_a_paused_rank_is_named_and_the_all_clear_follows(tmp_path) -> None:
    """Rank 1's worker is stopped (SIGSTOP) for a second five times; rank 0 names rank 1, never itself, and
    says when no rank is a straggler any more. (A pause that falls while rank 1 itself waits in a collective
    stalls both ranks alike and cannot be told from waiting: five pauses make a miss of all unlikely.) The run
    is long and ends by SIGTERM once twenty windows have passed since the last pause, however fast the host."""
    pids = tmp_path / "pids"
    pids.mkdir()
    run_dir = tmp_path / "paused"
    args = slow_model_args(tmp_path, "paused", "train.epochs=10000", f"model.kwargs.pid_dir={pids}")
    cmd = [*torchrun_cmd(2), "-m", "dist_train", *args]
    run = subprocess.Popen(
        cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def windows() -> int:
        metrics = run_dir / "metrics.jsonl"  # counted as text: the last line may be half written
        return metrics.read_text().count('"ranks/step_s/rank0"') if metrics.exists() else 0

    try:
        deadline = time.monotonic() + 120
        while windows() < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
        assert run.poll() is None, run.communicate()[1][-4000:]
        worker = int((pids / "rank1.pid").read_text())
        for _ in range(5):
            os.kill(worker, signal.SIGSTOP)
            time.sleep(1.0)
            os.kill(worker, signal.SIGCONT)
            time.sleep(0.6)
        after = windows()
        while windows() < after + 20 and time.monotonic() < deadline + 120 and run.poll() is None:
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    lines = stragglers(stdout)
    # Where the pause fell in rank 1's own time (its compute, or its loader's next batch) names the cause.
    assert any(line.startswith("straggler: rank 1 ") for line in lines), stdout[-4000:]
    assert not any(line.startswith("straggler: rank 0 ") for line in lines), lines
    assert "stragglers: none now" in stdout, stdout[-4000:]
