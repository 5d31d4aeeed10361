"""Tar shards on many nodes: one shard directory, a 2-node × 2-task SLURM job (the cluster of
tests/test_multinode.py), both backends; each rank reads only the samples of its micro-batches
(tests/test_shards.py checks that in one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from test_multinode import cluster, submit_two_by_two  # noqa: F401 - cluster is a fixture

from dist_train.config import load_config
from dist_train.data.shard_writer import write_shards

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_two_node_job_trains_from_one_shard_directory(tmp_path: Path, backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    shards = tmp_path / "shards"
    write_shards(load_config(REPO / "configs" / "quickstart.yaml").data, shards)
    submit_two_by_two(tmp_path, "data.dataset=webdataset", f"data.root={shards}", f"data.backend={backend}")
