#!/usr/bin/env bash
# The speed suite (bench/gpu_suite.py) from the repo root, without installing the package.
#
#   bench/gpu_suite.sh                        # GPU sizes with CUDA (≤ 8 min on one H100), else CPU sizes
#   bench/gpu_suite.sh --cpu | --smallest     # CPU sizes (≤ 5 min) | the test's sizes
#   bench/gpu_suite.sh --only sync_check,gbn  # some sections; --out DIR (default bench/results)
#   bench/gpu_suite.sh --vendor               # here: copy omegaconf + PyYAML (pure Python) from .venv to
#                                             # build/vendor, for a machine that has torch but not them
#
# PYTHON chooses the interpreter (default: python3). The package needs torch, torchvision, numpy, PIL,
# tensorboard, omegaconf and PyYAML; build/vendor, when present, goes on PYTHONPATH after the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--vendor" ]]; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf build/vendor
    mkdir -p build/vendor
    cp -r "$site/omegaconf" "$site/yaml" build/vendor/
    find build/vendor -name __pycache__ -prune -exec rm -rf {} +
    echo "copied omegaconf and yaml to build/vendor ($(du -sh build/vendor | cut -f1)); carry build/vendor with the checkout"
    exit 0
fi

PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d build/vendor ]]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/build/vendor"
fi
export KINETO_LOG_LEVEL=${KINETO_LOG_LEVEL:-6}

missing=$("$PYTHON" -c '
import importlib.util
need = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
        "tensorboard": "tensorboard", "omegaconf": "omegaconf", "yaml": "PyYAML"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
')
if [[ -n "$missing" ]]; then
    echo "gpu_suite: $PYTHON lacks: $missing" >&2
    echo "gpu_suite: pip install $missing, or run 'bench/gpu_suite.sh --vendor' where this checkout's .venv is" \
        "and bring build/vendor (omegaconf, PyYAML); the sections that need them will say they failed" >&2
fi
exec "$PYTHON" bench/gpu_suite.py "$@"
