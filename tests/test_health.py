"""Every rank's pace: the rule that names a straggler, and a 2-rank torchrun job with one rank's data slowed."""

from __future__ import annotations

import socket

import pytest
from conftest import assert_ok, read_metrics, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_train.techniques.rank_health import RankStats


def stats(step_s: list[float], data_wait_s: list[float]) -> RankStats:
    n = len(step_s)
    values = {"step_s": step_s, "data_wait_s": data_wait_s, "images_per_s": [100.0] * n, "peak_memory_gb": [0.5] * n}
    return RankStats(values, [f"node{r // 2}" for r in range(n)])


def test_a_rank_waiting_markedly_longer_for_data_is_a_straggler() -> None:
    slow = stats([0.1] * 4, [0.001, 0.002, 0.001, 0.05])
    assert slow.stragglers() == [3]
    line = "straggler: rank 3 on node1 waits 50 ms a step for data (the other ranks: 1 ms) in steps of 100 ms"
    assert slow.describe(3) == line
    assert stats([0.1] * 4, [0.001, 0.002, 0.001, 0.02]).stragglers() == []  # 19 ms more: under a quarter step
    assert stats([0.1] * 4, [0.04, 0.06, 0.04, 0.05]).stragglers() == []  # all load slowly: no single straggler
    assert stats([0.1], [0.09]).stragglers() == []
    assert stats([0.1] * 2, [0.01, 0.08]).stragglers() == [1]  # two ranks: each against the other


def test_rank_scalars_per_rank_worst_and_spread() -> None:
    scalars = stats([0.1, 0.12], [0.001, 0.05]).scalars()
    assert scalars["ranks/data_wait_s/rank1"] == 0.05 and scalars["ranks/data_wait_s/worst"] == 0.05
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
    run_dir = tmp_path / "slow"
    windows = [r for r in read_metrics(run_dir) if "ranks/data_wait_s/rank1" in r]
    assert [r["step"] for r in windows] == [4, 8, 12, 16]
    # 16 images a step on rank 1, 4 ms each: at least 64 ms a step waiting, rank 0 only for its images' decoding.
    assert all(r["ranks/data_wait_s/rank1"] >= max(0.064, 2 * r["ranks/data_wait_s/rank0"]) for r in windows)
    assert all(r["ranks/slowest_rank"] == 1 for r in windows)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.value for e in events.Scalars("ranks/slowest_rank")] == [1.0] * 4
    assert all(e.value >= 0.064 for e in events.Scalars("ranks/data_wait_s/rank1"))
    assert {"ranks/step_s/rank0", "ranks/step_s/rank1", "ranks/images_per_s/total"} <= set(events.Tags()["scalars"])
    (text,) = events.Tensors("ranks/stragglers/text_summary")
    assert text.tensor_proto.string_val[0].decode() == named[0]
