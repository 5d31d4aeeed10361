#!/usr/bin/env bash
# Masters & Luschi (2018) on real MNIST (8,000 / 2,000 split): the batch size × base-LR grid of
# configs/sweeps/mnist_small_batch.yaml, then the report's table and heatmap copied to experiments/results/.
#
#   experiments/small_batch_sweep_mnist.sh            # through SLURM when a cluster answers, else here
#   experiments/small_batch_sweep_mnist.sh --local    # here, one run after another
#
# Env: PYTHON (default: .venv/bin/python if present, else python3), OUT_DIR (default runs/experiments),
# PARALLEL (SLURM array parallelism, default: the node's CPU count; one CPU per run).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT_DIR=${OUT_DIR:-runs/experiments}
SWEEP=configs/sweeps/mnist_small_batch.yaml
RESULTS=experiments/results
SWEEP_DIR=$OUT_DIR/mnist_small_batch

start=$(date +%s)
if [ "${1:-}" != "--local" ] && sinfo --noheader >/dev/null 2>&1; then
    "$PYTHON" -m dist_train submit --sweep "$SWEEP" "out_dir=$OUT_DIR" --wait \
        --cpus-per-task 1 --array-parallelism "${PARALLEL:-$(nproc)}" --time 60 --job-name mnist-sweep
else
    "$PYTHON" -m dist_train sweep "$SWEEP" "out_dir=$OUT_DIR"
fi
echo "sweep wall time: $(( $(date +%s) - start )) s"

"$PYTHON" -m dist_train report "$SWEEP_DIR" --out "$SWEEP_DIR"
mkdir -p "$RESULTS"
cp "$SWEEP_DIR/report.md" "$RESULTS/small_batch_sweep_mnist.md"
cp "$SWEEP_DIR/report.csv" "$RESULTS/small_batch_sweep_mnist.csv"
cp "$SWEEP_DIR/heatmap.png" "$RESULTS/small_batch_sweep_mnist.png"
echo "results: $RESULTS/small_batch_sweep_mnist.{md,csv,png}"
