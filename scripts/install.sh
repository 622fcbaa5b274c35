#!/usr/bin/env bash
# Install daunce_fast from this source tree (editable) with the extras named by the first argument
# (comma-separated, default "test": everything the test suite uses; scripts/demo.sh passes "demo"
# or "demo,lm"). Usage: bash scripts/install.sh [EXTRAS]
# torch comes first and pinned (2.13.0: a CPU wheel on the project's machines) unless a torch is
# already installed (e.g. a CUDA build on a GPU machine): an unpinned torch would pull a
# multi-GB CUDA build. The C++/CUDA extension is built by CMake during the install
# (DAUNCE_FAST_CUDA=auto|1|0 chooses whether csrc/cuda is compiled; default: when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-test}
if [[ ! $extras =~ ^[a-z0-9_-]+(,[a-z0-9_-]+)*$ ]]; then
  echo "install.sh: error: extras must be comma-separated names (e.g. demo,lm), got '$extras'" >&2
  exit 2
fi
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "torch==${DAUNCE_FAST_TORCH:-2.13.0}"
fi
"$PY" -m pip install -e ".[$extras]"
