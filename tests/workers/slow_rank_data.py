"""A data set read more slowly on one rank, as from a slow disk on one node: ``data.dataset:
tests/workers/slow_rank_data.py:images`` with ``data.kwargs.slow_rank`` and ``data.kwargs.delay_s``."""

import os
import time

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class Images(Dataset):
    """Random 8×8 greyscale images of 4 classes; each read sleeps ``delay_s`` on rank ``slow_rank``."""

    classes = ("a", "b", "c", "d")

    def __init__(self, count: int, seed: int, delay_s: float) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 255, (count, 8, 8)).astype(np.uint8)
        self.labels = rng.integers(0, len(self.classes), count)
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        time.sleep(self.delay_s)
        return Image.fromarray(self.images[index]), int(self.labels[index])


def images(slow_rank: int = 1, delay_s: float = 0.002, train_size: int = 512) -> tuple[Dataset, Dataset]:
    """The (train, val) pair; the training images of rank ``slow_rank`` (torchrun's RANK) arrive late."""
    slow = int(os.environ.get("RANK", "0")) == slow_rank
    return Images(train_size, 0, delay_s if slow else 0.0), Images(64, 1, 0.0)
