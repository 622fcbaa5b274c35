#!/usr/bin/env bash
# The main job of the README: install the package with what the demo needs (the `demo` extra:
# scikit-learn, matplotlib; plus the `lm` extra, transformers, when --lm is among the arguments;
# see install.sh), then the DAUNCE demo on the embedded default (scikit-learn's digits; no download,
# no GPU). Extra arguments go to `daunce-fast demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=demo
for a in "$@"; do
  if [[ $a == --lm ]]; then extras=demo,lm; fi
done
bash scripts/install.sh "$extras"
exec "${PYTHON:-python3}" -m daunce_fast demo "$@"
