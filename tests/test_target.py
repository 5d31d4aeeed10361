"""Train to a target: a run ends after the first epoch that reaches its training-loss or accuracy target."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from dist_train.config import load_config
from dist_train.run import train


@pytest.mark.parametrize(
    ("target", "epochs", "reached"),
    [("target.train_loss=50", 1, True), ("target.train_acc=0.01", 1, True), ("target.train_loss=1e-6", 3, False)],
)
def test_a_run_stops_after_the_epoch_that_reaches_its_target(tmp_path, target, epochs, reached):
    cfg = load_config(None, [*TINY, "train.epochs=3", target, f"out_dir={tmp_path}", "name=run"])
    summary = train(cfg)
    steps_per_epoch = 512 // 32
    assert summary["epochs"] == epochs and summary["steps"] == epochs * steps_per_epoch
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["target"]
    assert recorded["reached"] is reached
    if reached:
        assert (recorded["epoch"], recorded["step"]) == (1, steps_per_epoch)
