#!/usr/bin/env bash
# One call on the GPU machine: the SLA GPU test grid, the official comparison, the benchmark.
# Usage (repo root, official folders copied into the git-ignored .external/ and carried):
#   bash benchmarks/gpu_session.sh tune    (kernel configs; not part of "all")
#   bash benchmarks/gpu_session.sh [grid|compare|bench|all]   (logs under $OUT, or ./gpu_logs)
set -uo pipefail
what=${1:-all}
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONPATH=$PWD/src:$PWD/benchmarks:${PYTHONPATH:-} PYTHONUNBUFFERED=1
official=(--official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1)
if [[ $what == grid || $what == all ]]; then
  timeout 480 python3 -m pytest -q --tb=line -n 8 -p no:cacheprovider tests/ops/test_sla_triton_gpu.py \
    tests/ops/test_sla_triton.py 2>&1 | tee "$out/grid.log" | tail -n 40
fi
if [[ $what == compare || $what == all ]]; then
  timeout 120 python3 benchmarks/compare_official_sla.py "${official[@]}" 2>&1 | tee "$out/compare.log" | tail -n 12
fi
if [[ $what == bench || $what == all ]]; then
  timeout 300 python3 benchmarks/bench_attention.py "${official[@]}" "${@:2}" 2>&1 | tee "$out/bench.log" | grep -v "^{" | tail -n 30
fi
if [[ $what == tune ]]; then
  timeout 300 python3 benchmarks/tune_sla.py --d 128 --block-q 128 2>&1 | tee "$out/tune128.log" | grep -v "^{" | tail -n 14
  timeout 200 python3 benchmarks/tune_sla.py --d 64 --block-q 64 2>&1 | tee "$out/tune64.log" | grep -v "^{" | tail -n 14
fi
