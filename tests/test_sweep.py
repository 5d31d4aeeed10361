"""Sweeps without SLURM: the sweep file, local runs one after another, and ``dist-train report``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import TINY, assert_ok, run_cli, write_sweep
from PIL import Image

from dist_train.errors import ConfigError, DistTrainError
from dist_train.report import find_runs, make_grid, write_report
from dist_train.sweep import load_sweep, run_label


def test_grid_expands_to_named_runs(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"data.batch_size": [16, 32], "optim.lr": [0.01, 0.1, 1.0]})
    sweep = load_sweep(path, ("seed=3",))
    assert [run.label for run in sweep.runs] == [
        f"batch_size={b},lr={lr}" for b in (16, 32) for lr in ("0.01", "0.1", "1")
    ]
    assert sweep.directory == tmp_path / "runs" / "grid"
    second = sweep.runs[1].config
    assert (second.data.batch_size, second.optim.lr, second.seed) == (16, 0.1, 3)
    assert second.name == "batch_size=16,lr=0.1" and second.model.width == 8  # the fixed overrides apply


def test_labels_keep_full_keys_when_short_ones_collide() -> None:
    assert run_label({"optim.lr": 0.1, "swap.phase2.lr": 0.01}) == "optim.lr=0.1,swap.phase2.lr=0.01"
    assert run_label({"data.root": "a/b"}) == "root=a-b"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": {"optim.lrr": [0.1]}}, "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        ({"grid": {"optim.lr": 0.1}}, "grid key 'optim.lr' needs a non-empty list of values"),
        ({"grid": {"optim.lr": []}}, "grid key 'optim.lr' needs a non-empty list of values"),
        ({"grid": {}}, "'grid' must map config keys to lists of values"),
        ({"grid": {"data.batch_size": [8, 8]}}, "lists a value twice"),
        ({"grid": {"data.batch_size": [0, 8]}}, "run batch_size=0: data.batch_size must be at least 1"),
        ({"grid": {"optim.lr": [0.1]}, "grids": 1}, "unknown sweep key 'grids'; did you mean 'grid'?"),
        ({"grid": {"optim.lr": [0.1]}, "overrides": {"optim.lr": 0.2}}, "'optim.lr' is both in 'overrides'"),
        ({"grid": {"optim.lr": [0.1]}, "name": "a/b"}, "'name' must be a plain directory name"),
        ({"grid": {"optim.lr": [0.1]}, "config": "missing.yaml"}, "config file not found"),
    ],
)
def test_malformed_sweeps_fail_with_one_line(tmp_path: Path, spec: dict, message: str) -> None:
    grid = spec.pop("grid")
    with pytest.raises(ConfigError) as error:
        load_sweep(write_sweep(tmp_path, grid, **spec))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_sweep_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a sweep file is a mapping"):
        load_sweep(path)


@pytest.mark.slow
def test_local_sweep_then_report(tmp_path: Path) -> None:
    """Four runs one after another, a rerun that skips them, and the report's table, CSV and heatmap."""
    path = write_sweep(tmp_path, {"data.batch_size": [16, 64], "optim.lr": [0.02, 0.1]}, overrides={"train.epochs": 1})
    result = run_cli(["sweep", str(path)], timeout=600)
    assert_ok(result)
    sweep_dir = tmp_path / "runs" / "grid"
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    assert sorted(summaries) == sorted(run.label for run in load_sweep(path).runs)
    assert summaries["batch_size=64,lr=0.1"]["steps"] == 512 // 64
    assert summaries["batch_size=16,lr=0.02"]["config"]["optim"]["lr"] == 0.02

    again = run_cli(["sweep", str(path)])
    assert_ok(again)
    assert again.stdout.count("done already, skipped") == 4

    report = run_cli(["report", str(sweep_dir)])
    assert_ok(report)
    markdown = (sweep_dir / "report.md").read_text()
    assert "| optim.lr \\ data.batch_size | 16 | 64 |" in markdown
    assert markdown.count("| 0.02 |") + markdown.count("| 0.1 |") >= 2
    with (sweep_dir / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        summary = summaries[row["run"]]
        assert float(row["val_error_pct"]) == pytest.approx(100 * (1 - summary["val_acc"]))
        # One epoch of a tiny run may still sit at chance: the report calls that collapsed, not ok.
        assert row["status"] == ("collapsed" if summary["val_acc"] <= 0.15 else "ok")
    with Image.open(sweep_dir / "heatmap.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200


@pytest.mark.slow
def test_divergence_stops_the_run_and_shows_in_the_report(tmp_path: Path) -> None:
    args = ["train", "--config", "configs/quickstart.yaml", *TINY, f"out_dir={tmp_path}", "train.epochs=3"]
    assert_ok(run_cli([*args, "name=ok"]))
    diverging = run_cli([*args, "name=blowup", "optim.lr=1e6", "train.grad_clip_norm=0"])
    assert_ok(diverging)
    assert "the run diverged" in diverging.stdout + diverging.stderr
    blowup = json.loads((tmp_path / "blowup" / "summary.json").read_text())
    assert blowup["diverged"] and blowup["epochs"] == 1  # stopped after the first epoch
    grid = make_grid(find_runs([tmp_path]), "data.batch_size", "optim.lr")
    assert grid.diverged[(32, 1e6)] and not grid.diverged[(32, 0.05)]
    assert grid.best() == (32, 0.05)
    written = write_report([tmp_path / "ok", tmp_path / "blowup"], tmp_path / "report", plot=False)
    assert "(div.)" in written["markdown"].read_text() and "heatmap" not in written


@pytest.mark.slow
def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(DistTrainError, match=r"no summary\.json under"):
        write_report([tmp_path])
    result = run_cli(["report", str(tmp_path / "nowhere")])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"dist-train: error: no such run directory: {tmp_path / 'nowhere'}"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    with pytest.raises(DistTrainError, match=r"cannot read .*summary\.json"):
        write_report([tmp_path])


@pytest.mark.slow
def test_local_sweep_under_torchrun(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"seed": [0]})
    assert_ok(run_cli(["sweep", str(path), "--nproc-per-node", "2", "train.epochs=1"]))
    summary = json.loads((tmp_path / "runs" / "grid" / "seed=0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["config"]["train"]["epochs"] == 1


def test_report_averages_seeds_in_a_cell(tmp_path: Path) -> None:
    """Several runs of one (x, y) cell, e.g. a grid over seeds, show as their mean."""
    config = {"data": {"batch_size": 8}, "optim": {"lr": 0.1}, "name": "x"}
    for seed, accuracy in ((0, 0.90), (1, 0.80)):
        run = tmp_path / f"seed={seed}"
        run.mkdir()
        summary = {"val_acc": accuracy, "train_loss": 0.1, "config": config | {"seed": seed}}
        (run / "summary.json").write_text(json.dumps(summary))
    grid = make_grid(find_runs([tmp_path]), "data.batch_size", "optim.lr")
    assert grid.error[(8, 0.1)] == pytest.approx(15.0) and grid.count[(8, 0.1)] == 2
    written = write_report([tmp_path], plot=False)
    assert "| run | data.batch_size | optim.lr | seed |" in written["markdown"].read_text()  # what varies
    with pytest.raises(DistTrainError, match=r"its config has no key 'optim\.momentum'"):
        write_report([tmp_path], x_key="optim.momentum", plot=False)


def test_report_marks_runs_that_collapsed_to_chance(tmp_path: Path) -> None:
    """A finite run stuck at chance (a constant prediction) is 'collapsed', not 'diverged' and not 'ok'."""
    runs = {
        "ok": (0.95, 0.2, {}),
        "collapsed": (0.1045, 2.301, {}),  # 10 classes: a constant prediction scores one class's share
        "diverged": (0.098, float("nan"), {"diverged": True}),
        "slow": (0.29, 1.9, {}),  # learning slowly: above chance
    }
    for lr, (name, (accuracy, loss, extra)) in zip((0.01, 0.1, 1.0, 0.001), runs.items(), strict=True):
        config = {"name": name, "data": {"dataset": "fashion_mnist", "batch_size": 128}, "optim": {"lr": lr}}
        (tmp_path / name).mkdir()
        summary = {"val_acc": accuracy, "train_loss": loss, "config": config, **extra}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    found = {run.run_dir.name: run for run in find_runs([tmp_path])}
    assert {name: run.status for name, run in found.items()} == {
        "ok": "ok",
        "collapsed": "collapsed",
        "diverged": "diverged",
        "slow": "ok",
    }
    grid = make_grid(list(found.values()), "data.batch_size", "optim.lr")
    assert grid.collapsed[(128, 0.1)] and not grid.collapsed[(128, 1.0)] and grid.diverged[(128, 1.0)]
    assert grid.best() == (128, 0.01)
    written = write_report([tmp_path], tmp_path / "report")
    markdown = written["markdown"].read_text()
    assert "89.55 (coll.)" in markdown and "(div.)" in markdown and "coll. = collapsed to chance" in markdown
    with written["csv"].open() as f:
        assert {row["run"]: row["status"] for row in csv.DictReader(f)}["collapsed"] == "collapsed"
    # Without a known number of classes (an ImageFolder run without num_classes) nothing is called collapsed.
    unknown = json.loads((tmp_path / "collapsed" / "summary.json").read_text())
    unknown["config"]["data"]["dataset"] = "imagefolder"
    (tmp_path / "collapsed" / "summary.json").write_text(json.dumps(unknown))
    assert not next(run for run in find_runs([tmp_path]) if run.run_dir.name == "collapsed").collapsed
