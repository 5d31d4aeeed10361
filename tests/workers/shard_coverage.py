"""Run under torchrun: which samples each rank's training loader yields, for both backends.

Images are constant and encode their own index, augmentation is off, so the index
can be read back from any normalised pixel. Writes ``OUT/rank{r}.json``. A fourth
argument ``across`` draws the batches across epoch boundaries (data.cross_epoch_batches).
"""

import json
import os
import sys
from pathlib import Path

import torch

from dist_train.config import load_config
from dist_train.data.arrays import ImageArrays, TensorImageDataset
from dist_train.data.dali import DaliTrainLoader
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.transforms import build_transform, recipe_for

MEAN, STD = 0.5, 0.25  # the synthetic recipe's normalisation


def indexed_dataset(length: int) -> TensorImageDataset:
    index = torch.arange(length)
    images = torch.zeros(length, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = (index // 256).view(-1, 1, 1).to(torch.uint8)
    images[:, 1] = (index % 256).view(-1, 1, 1).to(torch.uint8)
    transform = build_transform("synthetic", 8, train=False)
    return TensorImageDataset(ImageArrays(images, index % 10), transform)


def decode(images: torch.Tensor) -> list[int]:
    pixels = torch.round((images[:, :2, 0, 0] * STD + MEAN) * 255).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def main(out: Path, length: int, micro_batch: int, across: bool = False) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dataset = indexed_dataset(length)
    recipe = recipe_for(load_config(None, ["data.augment=false"]).data)
    options = LoaderOptions(micro_batch, rank=rank, world_size=world, across_epochs=across)
    loaders = {
        "torch": build_train_loader(dataset, options),
        "dali": DaliTrainLoader(dataset, recipe, 8, options),
    }
    seen = {
        name: {str(epoch): [i for images, _ in loader.epoch(epoch) for i in decode(images)] for epoch in (0, 1)}
        for name, loader in loaders.items()
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["across"])
