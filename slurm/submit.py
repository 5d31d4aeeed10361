#!/usr/bin/env python3
"""Submit a dist_train run or sweep to SLURM; the same as ``dist-train submit`` (see docs/many-gpus-and-nodes.md).

python slurm/submit.py --config configs/cifar10_resnet20.yaml --nodes 2 --gpus-per-node 8 out_dir=/shared/runs
python slurm/submit.py --sweep configs/sweeps/mnist_small_batch.yaml --array-parallelism 4 --dry-run
"""

import sys

from dist_train.cli import main

if __name__ == "__main__":
    sys.exit(main(["submit", *sys.argv[1:]]))
