"""dist_train: large-batch distributed training that generalizes like small-batch training."""

__version__ = "0.1.0"
