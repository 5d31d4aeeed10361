"""torchvision.transforms.v2 pipelines on uint8 C×H×W tensors, from one table of per-dataset settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torchvision.transforms import v2

from dist_train.config import DataConfig
from dist_train.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """How one dataset is augmented and normalised."""

    crop: str
    """Training crop: ``"pad"`` (RandomCrop with 4-pixel padding), ``"resized"``
    (RandomResizedCrop) or ``"none"``."""
    resize_eval: bool
    """Evaluate on Resize(size·256/224) + CenterCrop(size) (images of varying size)."""
    flip: bool
    """Random horizontal flips in training."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    """Padding of the pad-crop."""
    cutout: int = 0
    """Side of the cutout square (0 = none)."""


RECIPES: dict[str, Recipe] = {
    "cifar10": Recipe("pad", False, True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Recipe("pad", False, True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": Recipe("pad", False, True, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "mnist": Recipe("none", False, False, (0.1307,), (0.3081,)),
    "fashion_mnist": Recipe("none", False, False, (0.2860,), (0.3530,)),
    "imagefolder": Recipe("resized", True, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def recipe_name(cfg: DataConfig) -> str:
    """The data set whose recipe ``cfg`` takes: its own, or for tar shards their source's."""
    if cfg.dataset == "webdataset":
        from dist_train.data.shards import recipe_source

        return recipe_source(cfg.root)
    return cfg.dataset


def recipe_for(cfg: DataConfig) -> Recipe:
    """The dataset's recipe with the config's crop/flip/pad choices applied (shared by both backends)."""
    name = recipe_name(cfg)
    if name not in RECIPES:
        raise ConfigError(f"no transforms for dataset '{name}'; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    crop = recipe.crop if cfg.crop == "auto" else cfg.crop
    flip = recipe.flip if cfg.flip is None else cfg.flip
    if not cfg.augment:
        crop, flip = "none", False
    return replace(recipe, crop=crop, flip=flip, pad=cfg.pad, cutout=cfg.cutout if cfg.augment else 0)


def build_transform(
    dataset: str, image_size: int, train: bool, augment: bool = True, recipe: Recipe | None = None
) -> v2.Compose:
    """The pipeline for ``dataset``: uint8 C×H×W in, normalised float32 C×image_size×image_size out.

    Random steps are used only when ``train`` and ``augment`` are both true; a training pipeline
    without augmentation is the evaluation pipeline. ``recipe`` replaces the dataset's default one.
    """
    if recipe is None and dataset not in RECIPES:
        raise ConfigError(f"no transforms for dataset '{dataset}'; known: {', '.join(sorted(RECIPES))}")
    recipe = recipe or RECIPES[dataset]
    random = train and augment
    steps: list[torch.nn.Module] = []
    if random and recipe.crop == "resized":
        steps.append(v2.RandomResizedCrop(image_size, antialias=True))
    elif recipe.resize_eval:
        steps += [v2.Resize(int(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    if random and recipe.crop == "pad":
        steps.append(v2.RandomCrop(image_size, padding=recipe.pad))
    if random and recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(recipe.mean), list(recipe.std))]
    if random and recipe.cutout:
        steps.append(Cutout(recipe.cutout))
    return v2.Compose(steps)


class Cutout(torch.nn.Module):
    """Zero a ``size``×``size`` square at a uniformly random centre (clipped at the borders)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        top = int(torch.randint(height, ())) - self.size // 2
        left = int(torch.randint(width, ())) - self.size // 2
        image = image.clone()
        image[..., max(top, 0) : max(top + self.size, 0), max(left, 0) : max(left + self.size, 0)] = 0
        return image
