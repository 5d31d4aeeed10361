"""Dataset readers, transforms and distributed loaders."""

from dist_train.data.arrays import ImageArrays, TensorImageDataset, split
from dist_train.data.datasets import DatasetSplits, build_datasets

__all__ = ["DatasetSplits", "ImageArrays", "TensorImageDataset", "build_datasets", "split"]
