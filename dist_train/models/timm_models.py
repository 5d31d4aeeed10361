"""timm's models by name: ``model.name: timm/<name>``, any entry of ``timm.list_models()`` (the ``timm`` extra).

The ``timm/`` prefix cannot be read as an import path (``module:attr`` has a colon) nor as a torchvision
name. The factory contract is applied: ``num_classes`` as timm's, ``in_channels`` as its ``in_chans``, no
pretrained weights; ``model.kwargs`` go to ``timm.create_model`` (e.g. ``drop_rate``). Ghost BN converts
timm's ``nn.BatchNorm2d`` layers like any others; the start line names those it leaves (timm's fused
``BatchNormAct2d`` is a subclass of BatchNorm2d and is left as it is).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from dist_train.errors import ConfigError

PREFIX = "timm/"


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def timm_module() -> Any:
    """``timm``, or a one-line ConfigError naming the extra that provides it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model.name=timm/... needs timm, which is not installed: pip install 'dist_train[timm]' (or timm)"
        ) from None
    return timm


def check_timm_name(name: str, width: int) -> Any:
    """``timm`` once ``name`` is known to it and no ``model.width`` is asked of it (``dist-train submit`` checks
    this before queueing); else one line, with the closest of timm's names."""
    timm = timm_module()
    model_name = name.removeprefix(PREFIX)
    if width:
        raise ConfigError(
            f"model.width does not apply to {name}: add model.width=0 (timm's own arguments go in model.kwargs)"
        )
    known = timm.list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f"; closest: {', '.join(PREFIX + c for c in close)}" if close else ""
        raise ConfigError(f"unknown timm model {name!r}{hint} (timm.list_models() lists them)")
    return timm


def build_timm_model(name: str, num_classes: int, in_channels: int, width: int, kwargs: dict[str, Any]) -> nn.Module:
    """An untrained ``timm/<name>`` for ``num_classes`` and ``in_channels`` (see :func:`check_timm_name`)."""
    timm = check_timm_name(name, width)
    model_name = name.removeprefix(PREFIX)
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.name={name}: timm.create_model refused model.kwargs {kwargs}: {e}") from None
