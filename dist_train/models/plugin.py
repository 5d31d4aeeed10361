"""A model from the user's factory (``model.name: my_pkg.nets:build`` or ``nets.py:build``).

The factory is called as ``factory(num_classes=..., in_channels=..., image_size=..., **model.kwargs)``
and must return an ``nn.Module`` mapping float32 (N, in_channels, image_size, image_size) images to
(N, num_classes) logits. The module is checked with one forward pass of two zero images in eval mode
(no running statistic changes). Everything after that (Ghost BN, channels_last, compile, bf16,
checkpoints, SWAP, the diffusion monitor) is the built-in models' path.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from dist_train.errors import ConfigError
from dist_train.plugins import GIVEN, call_factory, describe_error, load_factory

KEY = "model.name"


def takes(factory: Any, argument: str) -> bool:
    """Whether ``factory`` accepts the keyword ``argument`` (by name or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call say
        return True
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def factory_arguments(name: str, kwargs: dict[str, Any], width: int) -> dict[str, Any]:
    """``model.kwargs``, with ``model.width`` as ``width=`` when set and the factory takes it; else one line
    saying what to do (a recipe's width is meant for its built-in model)."""
    if not width:
        return dict(kwargs)
    factory = load_factory(name, KEY)
    if isinstance(factory, nn.Module) or not takes(factory, "width"):
        raise ConfigError(
            f"model.width={width} does not apply to {name}, which takes no width argument: add model.width=0 "
            "(a recipe's width is for its built-in model) and pass the factory's own arguments in model.kwargs"
        )
    if "width" in kwargs and kwargs["width"] != width:
        raise ConfigError(f"model.width={width} and model.kwargs.width={kwargs['width']} disagree: set one")
    return {**kwargs, "width": width}


def build_plugin_model(
    name: str, kwargs: dict[str, Any], num_classes: int, in_channels: int, image_size: int, width: int = 0
) -> nn.Module:
    """The factory's model, checked to give (N, num_classes) logits for the data set's images; ``width``
    (model.width) is passed as ``width=`` to a factory that takes it."""
    factory = load_factory(name, KEY)
    if name.startswith(GIVEN) and isinstance(factory, nn.Module):  # an instance handed to dist_train.train()
        factory_arguments(name, kwargs, width)  # refuses a width
        model = copy.deepcopy(factory)
    else:
        sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
        model = call_factory(factory, name, KEY, **sizes, **factory_arguments(name, kwargs, width))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{KEY}={name}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    check_output(model, name, num_classes, in_channels, image_size)
    return model


@torch.no_grad()
def check_output(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    """One eval-mode forward of two zero images: the output must be a (2, num_classes) tensor."""
    was_training = model.training
    model.eval()
    try:
        output = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as e:
        raise ConfigError(
            f"{KEY}={name}: the model's forward on (2, {in_channels}, {image_size}, {image_size}) images raised "
            f"{describe_error(e)}"
        ) from None
    finally:
        model.train(was_training)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != (2, num_classes):
        raise ConfigError(
            f"{KEY}={name}: the model's output for 2 images is {shape}, expected (N, num_classes) = (2, {num_classes})"
        )
