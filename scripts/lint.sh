#!/usr/bin/env bash
# The lint step of .ci/run and of the pre-commit hooks: ruff (lint rules and formatting, configured
# in pyproject.toml) over the whole tree, and mypy over the typed modules ([tool.mypy] files).
# Installs the pinned tools first (they are not runtime dependencies). Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q "ruff==0.17.6" "mypy==2.4.1"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
echo "lint: ok"
