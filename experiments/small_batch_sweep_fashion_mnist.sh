#!/usr/bin/env bash
# Masters & Luschi (2018) on Fashion-MNIST: the batch size × base-LR grid of
# configs/sweeps/fashion_mnist_small_batch.yaml (42 runs of C1 on a fixed 10,000-image training subset,
# 4 epochs each, validated on the 10,000 test images), then the report's table (.md), raw numbers (.csv)
# and heatmap (.png) copied to experiments/results/small_batch_sweep_fashion_mnist.*.
#
#   experiments/small_batch_sweep_fashion_mnist.sh            # through SLURM when a cluster answers, else here
#   experiments/small_batch_sweep_fashion_mnist.sh --local    # here, one run after another
#   experiments/small_batch_sweep_fashion_mnist.sh --smoke    # a check: 2,048 images × 1 epoch per run
#
# Killed and run again, it continues. Same environment variables as small_batch_sweep_mnist.sh.
export SWEEP_NAME=fashion_mnist_small_batch RESULT_STEM=small_batch_sweep_fashion_mnist
exec "$(dirname "$0")/small_batch_sweep_mnist.sh" "$@"
