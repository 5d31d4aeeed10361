"""Plug-in models and data sets by import path: one line for each bad plug-in, both data-set answers in every
loader backend they take, the plan's count, recipes by name and the public API. In-process and small."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, subprocess_env

import dist_train
from dist_train.cli import main
from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.plugin import MapImageDataset
from dist_train.data.tensor_loader import TensorTrainLoader
from dist_train.errors import ConfigError

BAD = """
import torch
from torch import nn

CONST = 3


def build(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def with_width(num_classes, in_channels, image_size, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, width), nn.Linear(width, num_classes))


def raises(num_classes, in_channels, image_size):
    raise ValueError("no weights for this size")


def fails_on_rank_1(num_classes, in_channels, image_size):
    import os

    if os.environ.get("RANK") == "1":
        raise ValueError("rank 1 has no weights")
    return build(num_classes, in_channels, image_size)


def not_module(**sizes):
    return "a string"


def wrong_classes(num_classes, in_channels, image_size):
    return build(num_classes + 1, in_channels, image_size)


def _arrays(train_side=8, val_side=8, labels=(0, 1, 2, 1), count=4, dtype=torch.uint8, **extra):
    return {
        "train_images": torch.zeros(4, 1, train_side, train_side, dtype=dtype),
        "train_labels": torch.tensor(labels)[:count],
        "val_images": torch.zeros(2, 1, val_side, val_side, dtype=dtype),
        "val_labels": torch.tensor([0, 1]),
        **extra,
    }


def number():
    return 42


def mismatched():
    return _arrays(val_side=6)


def label_range():
    return _arrays(labels=(0, 1, 5, 1), num_classes=3)


def short_labels():
    return _arrays(count=3)


def float_images():
    return _arrays(dtype=torch.float32)


def not_pairs():
    return [1, 2], [3, 4]


def unknown_key():
    return {**_arrays(), "test_images": None}


class Single(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.zeros(1, 8, 8, dtype=torch.uint8)


def items_not_pairs():
    return Single(), Single()
"""

CASES = [
    ("model.name=nope.py:build", "model.name=nope.py:build: file not found: "),
    ("model.name=no_such_pkg.nets:build", "module 'no_such_pkg.nets' not found (working directory "),
    ("model.name=broken.py:build", "importing broken.py raised ZeroDivisionError: division by zero (at "),
    ("model.name=bad.py:buidl", "has no attribute 'buidl'; did you mean 'build'?"),
    ("model.name=bad.py:CONST", "model.name=bad.py:CONST: int object in "),
    ("model.name=bad.py:raises", "the factory raised ValueError: no weights for this size (at "),
    ("model.name=bad.py:not_module", "the factory returned str, expected a torch.nn.Module"),
    ("model.name=bad.py:wrong_classes", "the model's output for 2 images is (2, 11), expected (N, num_classes)"),
    ("data.dataset=bad.py:number", "the factory returned int; expected ArraySplits"),
    ("data.dataset=bad.py:mismatched", "train images are (1, 8, 8) (C, H, W) but val images (1, 6, 6)"),
    ("data.dataset=bad.py:label_range", "train_labels range over 0..5; expected 0..2 (3 classes)"),
    ("data.dataset=bad.py:short_labels", "train_labels has 3 values for 4 images"),
    ("data.dataset=bad.py:float_images", "train_images has dtype torch.float32; expected uint8"),
    ("data.dataset=bad.py:not_pairs", "the factory returned tuple; expected ArraySplits"),
    ("data.dataset=bad.py:unknown_key", "the factory's dict has unknown keys ['test_images']"),
    ("data.dataset=bad.py:items_not_pairs", "train[0] is a Tensor; expected an (image, label) pair"),
    ("data.dataset=nowhere", "unknown data.dataset 'nowhere'; choose one of synthetic"),
]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding bad.py (factories, good and bad) and broken.py (fails on import)."""
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    (tmp_path / "broken.py").write_text("def build():\n    pass\n\n\n1 / 0\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("override", "fragment"), CASES, ids=[case[0].split("=")[1] for case in CASES])
def test_a_bad_plugin_is_one_line_and_writes_nothing(
    plugin_dir: Path, capfd: pytest.CaptureFixture, override: str, fragment: str
) -> None:
    code = main(["train", *TINY, "model.width=0", "out_dir=out", "name=run", override])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("dist-train: error: "), err
    assert fragment in err[0], err[0]
    assert not list(plugin_dir.glob("out/**/*"))  # no run directory, no file


@pytest.mark.slow
def test_nproc_per_node_ends_in_one_line_per_failure(plugin_dir: Path) -> None:
    """``dist-train train --nproc-per-node 2`` (the documented launch): a factory failing on rank 1 ends in that
    worker's line and one line of the agent's, exit 1, no traceback; under a launcher the option is refused."""
    script = Path(sys.executable).parent / "dist-train"
    args = [
        "train",
        "--nproc-per-node",
        "2",
        *TINY,
        "model.width=0",
        "out_dir=out",
        "model.name=bad.py:fails_on_rank_1",
    ]
    result = subprocess.run([str(script), *args], env=subprocess_env(), capture_output=True, text=True, timeout=240)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 3, result.stderr[-3000:]  # no traceback, no agent log
    said = "model.name=bad.py:fails_on_rank_1: the factory raised ValueError: rank 1 has no weights (at "
    assert sorted(lines[:2]) == [
        f"[rank 0] dist-train: error: stopped because rank 1 failed: {said}{plugin_dir / 'bad.py'}:24)",
        f"[rank 1] dist-train: error: {said}{plugin_dir / 'bad.py'}:24)",
    ], lines
    assert lines[2].startswith("torchrun: worker rank ") and "(exit status 1, pid " in lines[2], lines
    inside = subprocess.run(
        [str(script), *args], env=subprocess_env() | {"LOCAL_RANK": "0"}, capture_output=True, text=True, timeout=60
    )
    assert inside.returncode == 1 and inside.stderr.strip() == (
        "dist-train: error: --nproc-per-node starts processes on this machine, but this is already one process of "
        "a job (LOCAL_RANK is set): leave the option out and let the launcher start them"
    ), inside.stderr


@pytest.mark.parametrize("command", ["train", "submit"])
def test_a_width_is_refused_by_a_factory_without_one_before_anything_is_queued(
    plugin_dir: Path, capfd: pytest.CaptureFixture, command: str
) -> None:
    """A recipe's model.width with a factory that takes none: one line saying what to do, from train and from
    submit --dry-run alike (the nodes would refuse it)."""
    dry = ["--dry-run"] if command == "submit" else []
    code = main([command, "--config", "quickstart", *TINY, "model.name=bad.py:build", "out_dir=out", *dry])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "model.width=8 does not apply to bad.py:build, which takes no width argument: add model.width=0" in err[0]
    assert not list(plugin_dir.glob("out/**/*"))  # no run directory, no file


def test_a_width_reaches_a_factory_that_takes_one(plugin_dir: Path) -> None:
    from dist_train.models import build_model

    assert build_model("bad.py:with_width", 3, 1, 8, width=5)[1].out_features == 5
    assert build_model("bad.py:with_width", 3, 1, 8)[1].out_features == 4  # 0: the factory's own default


def test_plan_counts_through_the_factory_or_takes_the_given_size(capsys: pytest.CaptureFixture) -> None:
    config = "examples/own_data/config.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        assert main(["plan", "--config", config, "data.kwargs.train_size=300"]) == 0
        assert main(["plan", "--config", config, "--train-size", "1000"]) == 0
    out = capsys.readouterr().out
    assert "(300 training images: counted by calling the factory examples/own_data/data.py:arrays)" in out
    assert "(1000 training images: given with --train-size)" in out


@pytest.fixture(scope="module")
def example_data() -> str:
    return str(REPO / "examples" / "own_data" / "data.py")


def options(copies: int = 2) -> LoaderOptions:
    return LoaderOptions(micro_batch=8, grad_accum_steps=1, rank=0, world_size=1, seed=0, workers=0, copies=copies)


@pytest.mark.parametrize("answer", ["arrays", "folders"])
def test_both_answers_give_the_built_in_shapes_with_augmentation(example_data: str, answer: str) -> None:
    cfg = load_config(None, [f"data.dataset={example_data}:{answer}", "data.crop=pad", "data.flip=true"]).data
    data = build_datasets(cfg, copies=2)
    assert (data.num_classes, data.in_channels, data.image_size) == (4, 1, 16)
    assert data.class_names == ("top-left", "top-right", "bottom-left", "bottom-right")
    assert data.recipe is not None and data.recipe.crop == "pad" and data.recipe.flip
    views, label = data.train[0]
    assert views.shape == (2, 1, 16, 16) and views.dtype == torch.float32 and 0 <= label < 4
    assert not torch.equal(views[0], views[1])  # two independent draws
    images, labels = next(iter(build_train_loader(data.train, options(1)).epoch(0)))
    assert images.shape == (8, 2, 1, 16, 16) or images.shape == (16, 1, 16, 16)
    if answer == "arrays":  # the tensor backend holds in-memory answers
        base = build_datasets(cfg, copies=1)
        tensor = TensorTrainLoader(base.train, base.recipe, options(), torch.device("cpu"))  # type: ignore[arg-type]
        images, labels = next(iter(tensor.epoch(0)))
        assert images.shape == (16, 1, 16, 16) and torch.equal(labels[:8], labels[8:])
    else:
        assert isinstance(data.train, MapImageDataset)


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["arrays", "folders"])
def test_both_answers_in_dali(dali: None, example_data: str, answer: str) -> None:
    from dist_train.data.dali import DaliEvalLoader, DaliTrainLoader

    data = build_datasets(load_config(None, [f"data.dataset={example_data}:{answer}", "data.crop=pad"]).data)
    loader = DaliTrainLoader(data.train, data.recipe, data.image_size, options())  # type: ignore[arg-type]
    images, labels = next(iter(loader.epoch(0)))
    assert images.shape == (16, 1, 16, 16) and labels.max() < 4 and torch.equal(labels[:8], labels[8:])
    val = DaliEvalLoader(data.val, data.recipe, data.image_size, 32)  # type: ignore[arg-type]
    images, labels = next(iter(val))
    reference = torch.stack([data.val[i][0] for i in range(32)])
    torch.testing.assert_close(images.contiguous(), reference, atol=1e-5, rtol=0)


def test_a_model_handed_over_in_python_is_copied_and_checked() -> None:
    from dist_train.models import build_model
    from dist_train.plugins import given

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    with given(model=net) as names:
        assert names == {"model": "given:Sequential"}
        built = build_model(names["model"], 5, 3, 8)
        assert built is not net and torch.equal(built[1].weight, net[1].weight)
        with pytest.raises(ConfigError, match=r"output for 2 images is \(2, 5\), expected .* \(2, 4\)"):
            build_model(names["model"], 4, 3, 8)
    with pytest.raises(ConfigError, match=r"handed to dist_train\.train\(\) in another process"):
        build_model("given:Sequential", 5, 3, 8)


def test_recipes_are_found_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart").name == "quickstart"
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^quickstart +Quickstart: a small CNN", out, re.MULTILINE) and "\nmnist_f1_lb " in out


@pytest.mark.slow
def test_the_public_api_is_small_and_cheap_to_import() -> None:
    assert sorted(dist_train.__all__) == sorted(
        [
            *("ArraySplits", "Config", "DatasetPair", "GhostBatchNorm1d", "GhostBatchNorm2d", "Plan", "RunRecord"),
            *("__version__", "average_parameters", "batch_views", "convert_to_ghost_bn", "load_config"),
            *("make_plan", "read_run", "recompute_bn", "train"),
        ]
    )
    for name in dist_train.__all__:
        assert getattr(dist_train, name) is not None
    code = "import sys, dist_train; print(sorted(m for m in ('torch', 'omegaconf', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
