#!/usr/bin/env bash
# The one script to run on a lent GPU (see the device tool): build the extension with CUDA,
# run the GPU and Triton tests natively, run each benchmark's GPU section, print a short table.
# Usage on the GPU machine, from the repo root:  bash bench/gpu_check.sh
# Writes logs and bench rows under $OUT (the device tool's folder) or bench/out/, section by
# section as they finish. The whole script stays under GPU_CHECK_BUDGET seconds (default 450, so a
# 10-minute device command has room for the machine's start): sections run in order of
# importance, each under its own time budget, cut to what is left; a section that would get under
# 20 s is skipped and says so; the table is printed last whatever happened.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-bench/out}
mkdir -p "$O"
export PYTHONUNBUFFERED=1 DAUNCE_FAST_CUDA=1 DAUNCE_FAST_CUDA_ARCHS=${DAUNCE_FAST_CUDA_ARCHS:-90}
export PYTHONPATH=$PWD DAUNCE_FAST_BENCH_OUT="$O"
t0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
left() { echo $(( BUDGET - 15 - ($(date +%s) - t0) )); }  # 15 s kept for the table
budget() {  # the section's own budget, cut to what is left of the whole
  local want=$1 l; l=$(left); echo $(( want < l ? want : l ))
}
if ! timeout "$(budget 150)" python3 setup.py build_ext --inplace >"$O/build.log" 2>&1; then
  tail -40 "$O/build.log"; echo "gpu_check: BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
python3 -m daunce_fast info | tee "$O/info.txt"
timeout "$(budget 170)" python3 -m pytest -q -m "gpu or triton" -p no:cacheprovider tests tests/correlation/test_trust.py::test_test_set_wider_than_the_grid_y_limit_on_gpu >"$O/gpu_tests.log" 2>&1
echo "gpu tests (exit $?): $(tail -1 "$O/gpu_tests.log")"
# Each benchmark's GPU section only (CPU sections are measured on the CPU machines).
run_bench() {  # name, own budget (s), command...; exit 124 = cut by its budget
  local name=$1 t; t=$(budget "$2"); shift 2
  if [ "$t" -lt 20 ]; then echo "$name: skipped (the script's budget is spent)"; return; fi
  timeout "$t" "$@" >"$O/$name.log" 2>&1
  echo "$name: exit $? in <= $t s ($(tail -1 "$O/$name.log" | cut -c1-100))"
}
# In order of importance: the kernels' own speed first, then the models built on them.
run_bench correlation 60 python3 bench/ops/bench_correlation.py --gpu-only
run_bench multilora 60 python3 bench/ops/bench_multilora.py --skip-cpu
run_bench loss_head 45 python3 bench/ops/bench_loss_head.py --no-cpu
run_bench conv_copies 60 python3 bench/ops/bench_conv_copies.py --gpu
run_bench lm 60 python3 bench/quality/lm_backdoor.py --gpu
run_bench roofline 60 python3 bench/ops/bench_fit_roofline.py --gpu
run_bench shared_prefix 40 python3 bench/ops/bench_shared_prefix.py --device cuda --K 512,2048 --n-train 1437 --repeats 2
python3 - "$O" <<'PY'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]) / "results.jsonl"
rows = [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
print(f"\n{'bench':24s} {'case':40s} {'value':>12s}")
for r in rows:
    if r.get("gpu"):
        for k in ("ratio", "tflops", "frac_of_matmul", "tokens_per_s", "median_s"):
            if k in r:
                print(f"{r['bench']:24s} {str(r.get('case', ''))[:40]:40s} {k}={r[k]:.4g}")
                break
PY
echo "gpu_check: total $(( $(date +%s) - t0 )) s"
