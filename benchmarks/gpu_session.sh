#!/usr/bin/env bash
# One call on the GPU machine: the SLA GPU test grid, the official comparison, the benchmark.
# Usage (repo root, official folders copied into the git-ignored .external/ and carried):
#   bash benchmarks/gpu_session.sh tune    (kernel configs; not part of "all")
#   bash benchmarks/gpu_session.sh [grid|compare|bench|all]   (logs under $OUT, or ./gpu_logs)
#   bash benchmarks/gpu_session.sh versus   (<= BUDGET s, default 450: this tree vs another tree's
#     src, by default a copy of an earlier commit in .external/head_src/src (OTHER_SRC=...), at
#     the reference shape, D=128 and D=64, then the GPU grid in the time left)
set -uo pipefail
what=${1:-all}
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONPATH=$PWD/src:$PWD/benchmarks:${PYTHONPATH:-} PYTHONUNBUFFERED=1
official=(--official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1)
# The SLA tests that run their kernels on the GPU.
grid_tests=(tests/ops/test_sla_triton_gpu.py tests/ops/test_sla_triton.py
  tests/ops/test_sla_block_map_kernel.py tests/ops/test_sla_block_pool_kernel.py
  tests/ops/test_sla_block_lists_kernel.py)
if [[ $what == grid || $what == all ]]; then
  timeout 480 python3 -m pytest -q --tb=line -n 8 -p no:cacheprovider "${grid_tests[@]}" 2>&1 |
    tee "$out/grid.log" | tail -n 40
fi
if [[ $what == compare || $what == all ]]; then
  timeout 120 python3 benchmarks/compare_official_sla.py "${official[@]}" 2>&1 | tee "$out/compare.log" | tail -n 12
fi
if [[ $what == bench || $what == all ]]; then
  timeout 300 python3 benchmarks/bench_attention.py "${official[@]}" "${@:2}" 2>&1 | tee "$out/bench.log" | grep -v "^{" | tail -n 40
fi
if [[ $what == tune ]]; then
  timeout 300 python3 benchmarks/tune_sla.py --d 128 --block-q 128 2>&1 | tee "$out/tune128.log" | grep -v "^{" | tail -n 14
  timeout 200 python3 benchmarks/tune_sla.py --d 64 --block-q 64 2>&1 | tee "$out/tune64.log" | grep -v "^{" | tail -n 14
fi
if [[ $what == versus ]]; then
  # <= BUDGET s. Timings first (they are what the call is for): the reference shape, D=128/bq=128
  # and D=64/bq=64, for this tree and for another tree side by side on the same GPU (e.g.
  # `git archive REV src | tar -x -C .external/head_src`, carried). Then the GPU grid
  # in the time that is left; -v logs every case as it ends, so a grid cut by the timeout still
  # shows what ran. (Each bench row is also printed as it is measured.)
  other_src=$(realpath "${OTHER_SRC:-.external/head_src/src}")
  for cfg in "128 128 60" "64 64 45"; do
    set -- $cfg
    for tree in tree other; do
      path=$PYTHONPATH
      [[ $tree == other ]] && path=$other_src:$PWD/benchmarks
      PYTHONPATH=$path timeout "$3" python3 benchmarks/bench_attention.py --quick --d "$1" \
        --block-q "$2" --label "$tree" 2>&1 | tee "$out/bench_d$1_$tree.log" | grep -v '^{"' | tail -n 4
    done
  done
  xdist=()
  python3 -c "import xdist" 2>/dev/null && xdist=(-n 8)
  left=$((${BUDGET:-450} - SECONDS))
  timeout $((left > 30 ? left : 30)) python3 -m pytest -v --tb=line ${xdist[@]+"${xdist[@]}"} -p no:cacheprovider \
    "${grid_tests[@]}" > "$out/grid.log" 2>&1
  echo "grid exit $? after ${SECONDS}s: $(grep -c PASSED "$out/grid.log") passed"
  grep -E "FAILED|ERROR|^E  |[0-9]+ (passed|failed)" "$out/grid.log" | tail -n 40
fi
