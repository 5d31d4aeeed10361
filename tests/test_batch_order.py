"""Batches drawn across epoch boundaries (data.cross_epoch_batches): no sample dropped, both backends
in the same order, sharded over ranks, and a run that stops at exactly the planned number of updates."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import REPO, TINY, assert_ok, subprocess_env, torchrun_cmd

from dist_train.assemble import build_trainer
from dist_train.config import load_config
from dist_train.data.batching import steps_per_epoch
from dist_train.data.loader import BatchOrder
from dist_train.distributed import distributed
from dist_train.errors import ConfigError


def stream(length: int, seed: int, positions: int) -> list[int]:
    """The first ``positions`` samples of the stream: epoch permutations (DistributedSampler's) end to end."""
    passes = -(-positions // length)
    perms = [torch.randperm(length, generator=torch.Generator().manual_seed(seed + d)) for d in range(passes)]
    return torch.cat(perms)[:positions].tolist()


@pytest.mark.parametrize(("length", "micro_batch", "accum"), [(100, 16, 1), (100, 16, 2), (1000, 96, 1), (64, 64, 1)])
def test_one_rank_reads_the_stream_in_order(length, micro_batch, accum):
    order = BatchOrder(length, micro_batch, accum, rank=0, world_size=1, seed=3, across_epochs=True)
    batch = micro_batch * accum
    assert order.steps_per_epoch == max(1, round(length / batch)) == steps_per_epoch(length, batch, True)
    epochs = 5
    seen = [i for e in range(epochs) for b in order.micro_batches(e) for i in b]
    assert seen == stream(length, 3, epochs * order.steps_per_epoch * batch)
    # Each pass over the data holds every sample exactly once: nothing is dropped or repeated.
    for start in range(0, len(seen) - length + 1, length):
        assert sorted(seen[start : start + length]) == list(range(length))
    assert order.epoch_share_used == 1.0


def test_per_epoch_order_drops_the_tail_and_is_unchanged():
    order = BatchOrder(100, 16, 1, rank=0, world_size=1, seed=0)
    assert order.steps_per_epoch == 6 and order.epoch_share_used == pytest.approx(0.96)
    for epoch in (0, 1):
        batches = order.micro_batches(epoch)
        assert [i for b in batches for i in b] == stream(100, 0, 100 * (epoch + 1))[100 * epoch :][:96]


def test_total_steps_make_the_last_epoch_partial():
    order = BatchOrder(100, 16, 2, rank=0, world_size=1, seed=0, across_epochs=True)
    order.total_steps = 7  # 3 steps an epoch: 3 + 3 + 1
    assert order.epochs == 3 and [order.steps_in(e) for e in range(4)] == [3, 3, 1, 0]
    assert [len(order.micro_batches(e)) for e in range(4)] == [6, 6, 2, 0]
    seen = [i for e in range(3) for b in order.micro_batches(e) for i in b]
    assert seen == stream(100, 0, 7 * 32)


def test_too_small_a_dataset_is_an_error():
    with pytest.raises(ConfigError, match="smaller than one global batch"):
        BatchOrder(30, 16, 1, rank=0, world_size=2, seed=0, across_epochs=True)


@pytest.mark.slow
def test_two_processes_share_the_stream_with_both_backends(tmp_path, dali):
    """2 ranks, 100 samples, global batch 32: rank r takes every other sample of each global batch; put
    back together, the batches are the stream itself (so nothing is dropped), the same for torch and DALI."""
    worker = REPO / "tests" / "workers" / "shard_coverage.py"
    cmd = [*torchrun_cmd(2), str(worker), str(tmp_path), "100", "16", "across"]
    assert_ok(subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["torch"] == ranks[0]["dali"] and ranks[1]["torch"] == ranks[1]["dali"]
    merged = []
    for epoch in ("0", "1"):
        parts = [r["torch"][epoch] for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 3 * 16  # round(100 / 32) = 3 steps an epoch
        for step in range(3):
            mine = [part[16 * step : 16 * (step + 1)] for part in parts]
            merged += [i for pair in zip(*mine, strict=True) for i in pair]  # positions 0, 2, ... then 1, 3, ...
    assert merged == stream(100, 0, 6 * 32)


@pytest.mark.slow
def test_adapted_run_stops_at_the_reference_updates(tmp_path):
    """500 images, reference batch 16 for 1 epoch (31 updates), run batch 32 adapted: 31 updates in
    16 + 15 steps (a partial second epoch), every sample used in the first pass."""
    overrides = [
        *TINY,
        "data.synthetic_train_size=500",
        "regime.reference_batch_size=16",
        "regime.adapt=true",
        "train.epochs=1",
        "schedule.milestones=[0.5]",
        f"out_dir={tmp_path}",
    ]
    cfg = load_config(None, overrides)
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        try:
            assert trainer.total_epochs == 2 and trainer.train_loader.steps_per_epoch == 16
            assert [trainer.train_loader.steps_in(e) for e in (0, 1)] == [16, 15]
            summary = trainer.fit()
        finally:
            trainer.monitor.close()
    assert summary["steps"] == 31 and summary["epochs"] == 2
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.05 * 0.1)  # dropped at the reference's step 16
