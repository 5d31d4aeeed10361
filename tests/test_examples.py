"""Every example in examples/ runs as its docstring says (shortened by overrides), with real processes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_ok, run_cli, subprocess_env, torchrun_cmd

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def own_model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """examples/own_model on 2 ranks: the user's CNN from a .py file, Ghost BN 16, M = 4 views."""
    out = tmp_path_factory.mktemp("own_model")
    result = run_cli(
        ["train", "--config", "examples/own_model/config.yaml", f"out_dir={out}", "train.epochs=1"], nproc=2
    )
    assert_ok(result)
    return out / "own_model", result.stdout


@pytest.mark.slow
def test_own_model_trains_with_ghost_bn_and_four_views_on_two_ranks(own_model_run: tuple[Path, str]) -> None:
    run_dir, stdout = own_model_run
    assert "2 process(es)" in stdout and "examples/own_model/nets.py:build" in stdout and "ghost BN 16" in stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["config"]["augment"]["copies"] == 4
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert "1.running_mean" in weights and "5.running_mean" in weights  # the user's BatchNorms, as Ghost BN
    assert "ghost BN 16 in 2 BatchNorm2d layers (1, 5)" in stdout  # which layers were converted, said at the start
    assert summary["ghost_bn_layers"] == {"1": "BatchNorm2d", "5": "BatchNorm2d"}


@pytest.mark.slow
def test_own_model_resumes(own_model_run: tuple[Path, str]) -> None:
    """A second epoch continues the run from its checkpoint (the plug-in is imported again)."""
    run_dir, _ = own_model_run
    args = ["train", "--config", "examples/own_model/config.yaml", f"out_dir={run_dir.parent}", "train.epochs=2"]
    result = run_cli([*args, "on_config_change=continue"], nproc=2)
    assert_ok(result)
    assert "resumed from" in result.stdout and json.loads((run_dir / "summary.json").read_text())["steps"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["arrays", "folders"])
def test_own_data_set_trains_through_the_cli(tmp_path: Path, answer: str) -> None:
    overrides = [f"data.dataset=examples/own_data/data.py:{answer}", "data.kwargs.train_size=256", "train.epochs=1"]
    result = run_cli(["train", "--config", "examples/own_data/config.yaml", f"out_dir={tmp_path}", *overrides])
    assert_ok(result)
    summary = json.loads((tmp_path / "own_data" / "summary.json").read_text())
    assert summary["val_acc"] > 0.4  # 4 classes: chance is 0.25


@pytest.mark.slow
def test_python_api_script_under_torchrun(tmp_path: Path) -> None:
    command = [*torchrun_cmd(2), str(EXAMPLES / "api_script.py"), f"out_dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert_ok(result)
    assert "api_script: val acc" in result.stdout and "after 8 planned updates" in result.stdout
    config = (tmp_path / "api_script" / "config.yaml").read_text()
    assert "name: given:Sequential" in config and "dataset: given:ArraySplits" in config


@pytest.mark.slow
def test_plain_loop_uses_ghost_bn_and_batch_views_without_the_trainer() -> None:
    spec = importlib.util.spec_from_file_location("plain_loop", EXAMPLES / "plain_loop.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.main(steps=10) < 0.3  # from ln 2 = 0.69
