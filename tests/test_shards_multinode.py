"""Tar shards on many nodes: one shard directory, a 2-node × 2-task SLURM job (the cluster of
tests/test_multinode.py), both backends; each rank reads only the samples of its micro-batches
(tests/test_shards.py checks that in one process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, assert_ok
from test_multinode import cluster, run_command, starts  # noqa: F401 - cluster is a fixture

from dist_train.config import load_config
from dist_train.data.shard_writer import write_shards

SUBMIT = "dist-train submit --config configs/quickstart.yaml --nodes 2 --tasks-per-node 2 --wait train.epochs=2"


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_two_node_job_trains_from_one_shard_directory(tmp_path: Path, backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    shards = tmp_path / "shards"
    write_shards(load_config(REPO / "configs" / "quickstart.yaml").data, shards)
    data = ["data.dataset=webdataset", f"data.root={shards}", f"data.backend={backend}"]
    result = run_command(SUBMIT, f"out_dir={tmp_path}", *data)
    assert_ok(result)
    assert re.search(r"job \d+: quickstart: val acc \d+\.\d+% after 64 steps", result.stdout), result.stdout
    run_dir = tmp_path / "quickstart"
    (start,) = starts(run_dir)
    assert start["world_size"] == 4 and start["hosts"] == ["node0", "node0", "node1", "node1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 64 and summary["val_acc"] > 0.3  # chance is 0.1
