#!/usr/bin/env bash
# Run the Triton kernel tests (interpreter, CPU) under another triton release, in a throwaway venv.
# The GPU image pins triton 3.6 while the CPU machines get 3.9: both must work.
# Usage: bash scripts/check_triton_version.sh [3.6.0]
# (triton 3.6's interpreter needs numpy < 2.4.)
set -euo pipefail
cd "$(dirname "$0")/.."
ver=${1:-3.6.0}
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==${DAUNCE_FAST_TORCH:-2.13.0}" "triton==$ver" "numpy<2.4" pytest hypothesis safetensors tqdm scipy
PYTHONPATH=$PWD "$venv/bin/python" -m pytest -q -m triton -p no:cacheprovider tests/correlation tests/losses tests/lora
rm -rf "$(dirname "$venv")"
