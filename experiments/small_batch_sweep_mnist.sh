#!/usr/bin/env bash
# Masters & Luschi (2018) on real MNIST (8,000 / 2,000 split): the batch size × base-LR grid of
# configs/sweeps/mnist_small_batch.yaml, then the report's table and heatmap copied to experiments/results/.
#
#   experiments/small_batch_sweep_mnist.sh            # through SLURM when a cluster answers, else here
#   experiments/small_batch_sweep_mnist.sh --local    # here, one run after another
#   experiments/small_batch_sweep_mnist.sh --smoke    # here, every run shrunk to 2,048 images × 1 epoch (a check)
#
# Run again, it continues: finished runs are skipped, interrupted ones resume from their checkpoint.
# Env: PYTHON (default: .venv/bin/python if present, else python3), OUT_DIR (default runs/experiments),
# PARALLEL (SLURM array parallelism, default: the node's CPU count; one CPU per run); SWEEP_NAME and
# RESULT_STEM pick another sweep of configs/sweeps/ (see small_batch_sweep_fashion_mnist.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SWEEP_NAME=${SWEEP_NAME:-mnist_small_batch}
RESULT_STEM=${RESULT_STEM:-small_batch_sweep_mnist}
OUT_DIR=${OUT_DIR:-runs/experiments}
RESULTS=experiments/results
EXTRA=()
if [ "${1:-}" = "--smoke" ]; then
    OUT_DIR=runs/experiments-smoke
    RESULTS=$OUT_DIR/results
    EXTRA=(data.train_subset=2048 train.epochs=1)
fi
SWEEP=configs/sweeps/$SWEEP_NAME.yaml
SWEEP_DIR=$OUT_DIR/$SWEEP_NAME

# One thread per run, as SLURM gives each run one CPU: with tiny batches, OpenMP threads that share
# cores with other processes wait on each other at every operator.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# A run killed with the script leaves its run lock: remove it (holder gone, this host) so the run resumes.
"$PYTHON" experiments/common.py release-stale-locks "$SWEEP_DIR"
start=$(date +%s)
if [ -z "${1:-}" ] && sinfo --noheader >/dev/null 2>&1; then
    "$PYTHON" -m dist_train submit --sweep "$SWEEP" "out_dir=$OUT_DIR" --wait \
        --cpus-per-task 1 --array-parallelism "${PARALLEL:-$(nproc)}" --time 60 --job-name "$SWEEP_NAME"
else
    "$PYTHON" -m dist_train sweep "$SWEEP" "out_dir=$OUT_DIR" "${EXTRA[@]}"
fi
echo "sweep wall time: $(( $(date +%s) - start )) s"

"$PYTHON" -m dist_train report "$SWEEP_DIR" --out "$SWEEP_DIR"
mkdir -p "$RESULTS"
cp "$SWEEP_DIR/report.md" "$RESULTS/$RESULT_STEM.md"
cp "$SWEEP_DIR/report.csv" "$RESULTS/$RESULT_STEM.csv"
cp "$SWEEP_DIR/heatmap.png" "$RESULTS/$RESULT_STEM.png"
echo "results: $RESULTS/$RESULT_STEM.{md,csv,png}"
