"""Tests for the model registry: shapes, sizes, BatchNorm presence and error messages."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY, assert_ok, run_cli
from torch import nn

from dist_train.errors import ConfigError
from dist_train.models import available_models, build_model

PROJECT_MODELS = ["mnist_f1", "c1", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "wrn16_4"]
SMALL_WIDTH = {"mnist_f1": 64, "c1": 16}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


SHAPE_CASES = [(name, 3, 32) for name in PROJECT_MODELS] + [("mnist_f1", 1, 28), ("c1", 1, 28)]


@pytest.mark.parametrize("name, in_channels, image_size", SHAPE_CASES)
def test_output_shape(name: str, in_channels: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels, image_size, width=SMALL_WIDTH.get(name, 0))
    x = torch.randn(4, in_channels, image_size, image_size)
    model.train()
    assert model(x).shape == (4, 10)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)


@pytest.mark.parametrize("image_size", [8, 13, 64])
def test_c1_any_image_size(image_size: int) -> None:
    model = build_model("c1", 5, in_channels=2, image_size=image_size, width=8)
    assert model(torch.randn(2, 2, image_size, image_size)).shape == (2, 5)


def test_width_overrides_default() -> None:
    assert _params(build_model("c1", 10, width=16)) < _params(build_model("c1", 10))
    f1 = build_model("mnist_f1", 10, in_channels=1, image_size=28, width=100)
    assert [m.out_features for m in f1.modules() if isinstance(m, nn.Linear)] == [100] * 5 + [10]


@pytest.mark.parametrize(
    "name, num_classes, expected",
    [("resnet20", 10, 0.27e6), ("resnet56", 10, 0.85e6), ("resnet110", 10, 1.7e6), ("wrn16_4", 100, 2.75e6)],
)
def test_parameter_counts(name: str, num_classes: int, expected: float) -> None:
    assert _params(build_model(name, num_classes)) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name", PROJECT_MODELS)
def test_has_batchnorm(name: str) -> None:
    model = build_model(name, 10, width=SMALL_WIDTH.get(name, 0))
    assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())


def test_torchvision_resnet18() -> None:
    model = build_model("resnet18", 7, image_size=64)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_torchvision_needs_three_channels() -> None:
    with pytest.raises(ConfigError, match="3-channel"):
        build_model("resnet18", 10, in_channels=1)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnt20", 10)
    message = str(info.value)
    assert "did you mean 'resnet20'" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["wrn15_4", "wrn20_2", "wrn4_1"])
def test_wrn_bad_depth(name: str) -> None:
    with pytest.raises(ConfigError, match="depth"):
        build_model(name, 10)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": 10, "width": -1}])
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        build_model("c1", **kwargs)


@pytest.mark.parametrize("name", ["wrn16_4", "resnet18"])
def test_width_rejected_where_name_fixes_it(name: str) -> None:
    with pytest.raises(ConfigError, match="width"):
        build_model(name, 10, width=32)


def test_resnet20_backward() -> None:
    model = build_model("resnet20", 10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


def test_available_models_lists_project_names() -> None:
    names = available_models()
    assert {"mnist_f1", "c1", "resnet20", "resnet110"} <= set(names)
    assert any(entry.startswith("wrn{depth}_{k}") for entry in names)
    assert any("torchvision" in entry for entry in names)


def test_timm_models_by_name_follow_the_factory_contract() -> None:
    """``timm/<name>``: num_classes and in_channels (timm's in_chans) applied; a bad name names the closest."""
    pytest.importorskip("timm", reason="timm's models need the timm extra")
    model = build_model("timm/test_resnet", num_classes=7, in_channels=1, image_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ConfigError, match=r"unknown timm model 'timm/resnet5O'; closest: timm/resnet50"):
        build_model("timm/resnet5O", num_classes=10)
    with pytest.raises(ConfigError, match=r"model.width does not apply to timm/test_resnet: add model.width=0"):
        build_model("timm/test_resnet", num_classes=10, width=16)


@pytest.mark.slow
def test_a_timm_model_trains_on_two_ranks_with_ghost_bn_lars_and_channels_last(tmp_path) -> None:
    pytest.importorskip("timm", reason="timm's models need the timm extra")
    args = ["train", *TINY, "model.name=timm/test_resnet", "model.width=0", "bn.ghost_batch_size=8"]
    args += ["optim.name=lars", "optim.decay_bn_and_bias=false", "train.channels_last=true", "train.epochs=1"]
    result = run_cli([*args, f"out_dir={tmp_path}", "name=timm"], nproc=2)
    assert_ok(result)
    assert re.search(r"timm/test_resnet \(374k params\).*ghost BN 8 in \d+ BatchNorm2d layers", result.stdout)
    summary = json.loads((tmp_path / "timm" / "summary.json").read_text())
    assert summary["steps"] == 512 // 32 and summary["ghost_bn_layers"]
