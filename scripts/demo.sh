#!/usr/bin/env bash
# The main job of the README: install (see install.sh), then the DAUNCE demo on the embedded
# default (scikit-learn's digits; no download, no GPU). Extra arguments go to `daunce-fast demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec daunce-fast demo "$@"
