"""Ghost BN under DDP with 2 real processes: per-rank statistics, averaged across ranks on demand."""

import json
import subprocess

import pytest
import torch
from conftest import REPO, TINY, assert_ok, run_cli, subprocess_env, torchrun_cmd

from dist_train.models import build_model

pytestmark = pytest.mark.slow


def test_buffers_stay_per_rank_then_average_to_the_mean(tmp_path):
    cmd = [*torchrun_cmd(2), str(REPO / "tests" / "workers" / "ghost_bn_ddp.py"), str(tmp_path)]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert_ok(result)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"])  # DDP kept the parameters in sync
    # The trainer's DDP copies rank 0's BN buffers for plain BN only, never for Ghost BN.
    assert [r["syncs"] for r in ranks] == [{"plain": True, "ghost": False}] * 2
    # Building the DDP (at the first step, after a resume restored each rank's BN statistics) keeps them.
    assert [r["kept"] for r in ranks] == [{"plain": True, "ghost": True}] * 2
    for key in ("mean", "var"):
        before = [r["before"][key] for r in ranks]
        assert not torch.allclose(before[0], before[1])  # DDP did not overwrite rank 1's statistics
        expected = (before[0] + before[1]) / 2
        for r in ranks:
            torch.testing.assert_close(r["after"][key], expected)


def test_training_with_ghost_bn_two_processes(tmp_path):
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=ghost", "bn.ghost_batch_size=4"], nproc=2)
    assert_ok(result)
    assert "ghost BN 4" in result.stdout
    summary = json.loads((tmp_path / "ghost" / "summary.json").read_text())
    assert summary["ghost_batch_size"] == 4 and summary["steps"] == 32
    state = torch.load(tmp_path / "ghost" / "checkpoints" / "last.pt", weights_only=True)
    plain = build_model("c1", num_classes=10, in_channels=3, image_size=32, width=8)
    plain.load_state_dict(state["model"])  # a Ghost BN checkpoint loads into the plain BatchNorm model
