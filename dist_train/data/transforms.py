"""torchvision.transforms.v2 pipelines on uint8 C×H×W tensors, from each data set's :class:`Recipe` (see catalog.py)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.transforms import v2

from dist_train.config import DataConfig
from dist_train.data.catalog import CATALOG, Recipe
from dist_train.data.shards import recipe_source
from dist_train.errors import ConfigError

RECIPES: dict[str, Recipe] = {name: info.recipe for name, info in CATALOG.items() if info.recipe is not None}
"""Each built-in data set's recipe (tar shards take their source's)."""


def recipe_name(cfg: DataConfig) -> str:
    """The data set whose recipe ``cfg`` takes: its own, or for tar shards their source's."""
    if cfg.dataset == "webdataset":
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
