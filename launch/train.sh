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
#   PYTHON          interpreter to use (default: the active virtual environment's, else this checkout's
#                   .venv, else python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${PYTHON:-} ]]; then
  python=$PYTHON
elif [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
  python=$VIRTUAL_ENV/bin/python
elif [[ -x $repo/.venv/bin/python ]]; then
  python=$repo/.venv/bin/python
else
  python=python3
fi
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
# A fresh rendezvous store for every restart (served by the workers' rank 0), not one the agent keeps: the
# agents of several nodes may count their restarts differently, and the workers must agree on the store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# dist_train.torchrun is torchrun, ending in one line instead of a traceback when workers fail or it is signalled.
exec "$python" -m dist_train.torchrun "${args[@]}" -m dist_train train "$@"
