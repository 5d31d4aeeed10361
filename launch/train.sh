#!/usr/bin/env bash
# Launch `dist-train train` under torchrun on one node or several; arguments are those of `dist-train train`.
#
#   One node, 8 processes:      NPROC_PER_NODE=8 launch/train.sh --config configs/quickstart.yaml optim.lr=0.2
#   Two nodes (run on each):    NNODES=2 RDZV_ENDPOINT=node0:29400 RDZV_ID=exp1 launch/train.sh --config FILE
#
# Environment (all optional):
#   NPROC_PER_NODE  processes per node (default: GPUs on this node, else 2)
#   NNODES          number of nodes (default 1: standalone rendezvous on this machine)
#   RDZV_ENDPOINT   host:port of the c10d rendezvous, needed when NNODES > 1
#   RDZV_ID         job id shared by all nodes (default: dist_train)
#   MAX_RESTARTS    torchrun restarts after a worker failure; runs resume from their last checkpoint (default 0)
#   PYTHON          interpreter to use (default: python3)
set -euo pipefail

python=${PYTHON:-python3}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
  gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
  NPROC_PER_NODE=$(( gpus > 0 ? gpus : 2 ))
fi
nnodes=${NNODES:-1}
args=(--nproc-per-node="$NPROC_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}")
if (( nnodes == 1 )); then
  args+=(--standalone)
else
  if [[ -z ${RDZV_ENDPOINT:-} ]]; then
    echo "launch/train.sh: error: NNODES=$nnodes needs RDZV_ENDPOINT=host:port (the c10d rendezvous)" >&2
    exit 2
  fi
  args+=(--nnodes="$nnodes" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-dist_train}")
fi
exec "$python" -m torch.distributed.run "${args[@]}" -m dist_train train "$@"
