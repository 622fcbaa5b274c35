#!/usr/bin/env bash
# The test command of the README: install (see install.sh), then the whole suite.
# Without a GPU, Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) and GPU-only
# tests are skipped with a reason. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
exec "${PYTHON:-python3}" -m pytest -q "$@"
