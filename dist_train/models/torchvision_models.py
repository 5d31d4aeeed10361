"""Classification networks from ``torchvision.models``, built untrained for any number of classes.

torchvision is imported lazily so that ``import dist_train.models`` stays cheap. Note that some of
these networks (ViT, Swin, ConvNeXt, plain VGG, AlexNet, SqueezeNet) have no BatchNorm layers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from torch import nn

from dist_train.errors import ConfigError

# Networks with auxiliary heads return a tuple in training mode; keep them to plain logits.
_NO_AUX_HEADS = {"googlenet", "inception_v3"}


@lru_cache(maxsize=1)
def classification_names() -> tuple[str, ...]:
    """Names of torchvision's image-classification models (no detection, segmentation or video)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """An untrained torchvision classifier ``name``; ``name`` must be in :func:`classification_names`."""
    import torchvision

    if in_channels != 3:
        raise ConfigError(f"torchvision model {name!r} expects 3-channel images, got in_channels={in_channels}")
    kwargs: dict[str, Any] = {}
    if name in _NO_AUX_HEADS:
        kwargs.update(aux_logits=False, init_weights=True)
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as error:  # e.g. ViT with an image size that its patch size does not divide
        message = " ".join(str(error).split())
        raise ConfigError(f"cannot build torchvision model {name!r}: {message}") from error
