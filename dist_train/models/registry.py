"""Build a network by name: the project's own models, Wide ResNets and torchvision classifiers."""

from __future__ import annotations

import difflib
import re
from typing import Any

from torch import nn

from dist_train.errors import ConfigError
from dist_train.models.cnn import C1
from dist_train.models.mlp import MnistF1
from dist_train.models.plugin import build_plugin_model
from dist_train.models.resnet_cifar import DEPTHS, CifarResNet
from dist_train.models.timm_models import build_timm_model, is_timm_name
from dist_train.models.torchvision_models import build_torchvision_model, classification_names
from dist_train.models.wide_resnet import WideResNet
from dist_train.plugins import is_import_path

PROJECT_MODELS: tuple[str, ...] = ("mnist_f1", "c1", *(f"resnet{depth}" for depth in DEPTHS))
WRN_PATTERN = "wrn{depth}_{k}"
_WRN_NAME = re.compile(r"wrn(\d+)_(\d+)")
_WRN_EXAMPLES = ("wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4")


def available_models() -> list[str]:
    """The project's model names, then the Wide ResNet pattern and a note on torchvision models."""
    return [
        *PROJECT_MODELS,
        f"{WRN_PATTERN} (depth - 4 divisible by 6, e.g. wrn16_4, wrn28_10)",
        "any torchvision classification model, e.g. resnet18 (torchvision.models.list_models())",
        "any timm model as timm/<name>, e.g. timm/resnet50 (timm.list_models(); model.kwargs go to it)",
        "a factory by import path: my_pkg.nets:build or path/to/nets.py:build (model.kwargs are its arguments)",
    ]


def _check_positive(**values: int) -> None:
    """Raise ConfigError for the first of ``values`` that is not a positive int."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {key} must be a positive integer, got {value!r}")


def _unknown(name: str) -> ConfigError:
    """A one-line error for an unknown model name, with the closest known name if there is one."""
    known = [*PROJECT_MODELS, *_WRN_EXAMPLES, *classification_names()]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown model {name!r}{hint} (see dist_train.models.available_models())")


def _build_wrn(name: str, depth: int, k: int, num_classes: int, in_channels: int, width: int) -> nn.Module:
    """WRN-depth-k, after checking the depth and that no separate width was asked for."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"model {name!r}: WRN depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
    if k < 1:
        raise ConfigError(f"model {name!r}: WRN widening factor k must be >= 1, got {k}")
    if width:
        raise ConfigError(f"model width does not apply to {name!r}: the k in {WRN_PATTERN} sets its width")
    return WideResNet(depth, k, num_classes, in_channels)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 0,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """An untrained network ``name`` for (N, in_channels, image_size, image_size) inputs.

    It returns logits of shape (N, num_classes). ``width`` is the hidden width of ``mnist_f1`` or the
    base channel width of ``c1`` and the CIFAR ResNets; 0 keeps the model's default. ``name`` may also
    be a factory's import path (``module:attr`` or ``file.py:attr``, see :mod:`dist_train.models.plugin`),
    called with ``kwargs``. Raises :class:`ConfigError` for an unknown name or arguments the model cannot take.
    """
    _check_positive(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if is_import_path(name):
        return build_plugin_model(name, dict(kwargs or {}), num_classes, in_channels, image_size, width)
    if is_timm_name(name):
        return build_timm_model(name, num_classes, in_channels, width, dict(kwargs or {}))
    if kwargs:
        raise ConfigError(f"model.kwargs apply to a model factory (model.name: module:attr), not to {name!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        raise ConfigError(f"model width must be a non-negative integer (0 = default), got {width!r}")
    key = name.strip().lower()
    if key == "mnist_f1":
        return MnistF1(in_channels * image_size * image_size, num_classes, width or 512)
    if key == "c1":
        return C1(in_channels, num_classes, width or 64)
    if key in PROJECT_MODELS:  # resnet20 ... resnet110
        return CifarResNet(int(key.removeprefix("resnet")), num_classes, in_channels, width or 16)
    wrn = _WRN_NAME.fullmatch(key)
    if wrn:
        return _build_wrn(key, int(wrn[1]), int(wrn[2]), num_classes, in_channels, width)
    if key in classification_names():
        if width:
            raise ConfigError(f"model width does not apply to torchvision model {key!r}; leave it at 0")
        return build_torchvision_model(key, num_classes, in_channels, image_size)
    raise _unknown(name)
