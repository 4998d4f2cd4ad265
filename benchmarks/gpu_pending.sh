#!/usr/bin/env bash
# The GPU runs the open issues still need, as calls made back to back on one warm machine (the
# cu13 CuTe DSL libraries are larger than one call carries):
#   23: the hopper grid and the side-by-side bench on the final kernels (attention_h100.json);
#   24: the whole Triton grid (D = 72 first), the joint-attention models and HunyuanVideo at
#       their native shapes;
#   26: the dense full-attention digits model that the LoRA study starts from (`dense`).
#
# Here, once (downloads the wheels into the git-ignored .whl/ and gpu_runs/; the official SLA
# branches `main` and `SLA-1` of github.com/thu-ml/SLA go into .external/sla_official_{main,sla_1}):
#   bash benchmarks/gpu_pending.sh prepare
# Then, with run's carry:
#   part1  carry gpu_runs/x1 gpu_runs/w1 .external   (no FlashAttention-4: Triton grid, models)
#   part2  carry gpu_runs/x2 gpu_runs/w2 .external   (installs FA4: hopper grid, side-by-side bench)
#   install1 / install2 (carry as part1 / part2)  (the installs alone, for calls that chain other
#          modes after them, e.g. `gpu_pending.sh install1 && gpu_pending.sh dense`)
#   ab     (same warm machine as part2 or install2; OTHER=ab/NAME)     (another tree's kernels against this
#          one: bench_attention --quick twice each, interleaved, and the hopper forward profile)
#   cute   (after part2 or install2; OTHER=ab/cute)    (the CuTe DSL kernels of branch wt-cute:
#          `git archive wt-cute src tests benchmarks pyproject.toml | tar -x -C ab/cute`; tests, benches)
#   cutesums (after part2 or install2; OTHER=ab/cute) (the CuTe DSL key-block sums, merged
#          into wt-cute; tests, bench, one launch's counters)
#   cuteop (after part2 or install2; OTHER=ab/cute) (the whole op's inference forward through
#          both CuTe kernels, `LaunchPolicy.cute`: its GPU tests, the side-by-side bench, the profile)
#   profile (after part2 or install2)  (where the hopper backward's time goes, kernel by kernel,
#          the D = 64 figures of both families, never measured since the hopper family landed,
#          and the hopper forward's tile sweep, with the H_i GEMM's tiles now in it)
#   wan    (after part2 or install2)  (the Wan2.1-1.3B forward compiled, CUDA graphs included,
#          on the hopper family: issue 23's 180 ms goal)
#   dense  (nothing carried; SECONDS_TRAIN=540 default) (trains `full` with the dense recipe of
#          docs/RESULTS.md section 1, unscored; a second call on the warm machine resumes it to
#          past step 5,000; $OUT/full.tgz holds the latest EMA model; a fresh machine starts
#          from it with INIT_FROM=..., as RESULTS.md section 1 did)
#   lora   (DENSE=the dense model folder, default the warm machine's step-5,000 checkpoint of
#          `dense`; STEPS=1200 default; call again to resume it) (issue 26's
#          quality comparison, `studies/lora_study.py`: full fine-tuning, LoRA r4 / r16 + SLA
#          projections, projections alone, SLA at 95%, 3 checkpoints each scored on 50 videos;
#          $OUT/lora_study/ holds results.jsonl and the figure)
# Logs go to $OUT (or ./gpu_logs); each step prints its exit code, time and last lines. END (seconds,
# default 570) is when a part stops starting its optional steps (e2e models).
set -uo pipefail
what=${1:?usage: gpu_pending.sh prepare|install1|install2|part1|part2|ab|profile|wan|cute|cutesums|cuteop|dense|lora}
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
end=${END:-570}
site=/tmp/site
pipi() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"
}
step() {
  local t=$1 name=$2 s=$SECONDS rc
  shift 2
  timeout "$t" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "== $name rc=$rc $((SECONDS - s))s"
  grep -v '^{"' "$out/$name.log" | tail -n "${TAILN:-8}"
}
grid=(tests/ops/test_sla_triton_gpu.py tests/ops/test_sla_triton.py tests/ops/test_sla_block_map_kernel.py
  tests/ops/test_sla_block_pool_kernel.py tests/ops/test_sla_block_lists_kernel.py)
fa4_path=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
# The two halves of FlashAttention-4's install, one per call (what a call carries is limited):
# the first keeps x1 in /tmp for the second, which joins it with x2 into the CuTe DSL libraries.
install1() {
  cp gpu_runs/x1 /tmp/cu13.x1
  pipi gpu_runs/w1/*.whl
}
install2() {
  [[ -f /tmp/cu13.x1 ]] || { echo "no first half here: run part1 or install1 on this machine first"; return 1; }
  pipi gpu_runs/w2/*.whl || return 1
  # After pip (whose --upgrade replaces whole package folders): the libraries join nvidia_cutlass_dsl/.
  cat /tmp/cu13.x1 gpu_runs/x2 |
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" |
    tar -x -C "$site" || return 1
  PYTHONPATH=$fa4_path python3 -c "import flash_attn.cute.interface; print('flash-attn-4 imports')" 2>&1 | tail -2
}

case $what in
prepare)
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64; do platforms+=(--platform "$p"); done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl diffusers==0.42.1 flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 \
    nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
    nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 \
    quack-kernels==0.6.5 || exit 1
  mkdir -p gpu_runs/w1 gpu_runs/w2 /tmp/cu13
  cp .whl/diffusers-*.whl gpu_runs/w1/
  find .whl -name '*.whl' ! -name 'diffusers-*' ! -name '*libs_cu13*' -exec cp {} gpu_runs/w2/ \;
  # The 92 MB wheel, unpacked and xz-compressed (64 MB), in two halves of one stream.
  (cd /tmp/cu13 && unzip -q -o "$OLDPWD"/.whl/nvidia_cutlass_dsl_libs_cu13-*.whl && tar -cf - .) |
    xz -9 -T2 >/tmp/cu13.tar.xz
  split -n 2 -d /tmp/cu13.tar.xz /tmp/cu13.part && mv /tmp/cu13.part00 gpu_runs/x1 &&
    mv /tmp/cu13.part01 gpu_runs/x2
  du -sh gpu_runs/*
  ;;
install1)
  install1
  ;;
install2)
  install2
  ;;
part1)
  install1 || exit 1
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  # The head dim 72 cases first (issue 24 needs them whole), then the rest of the grid.
  TAILN=6 step 200 grid_d72 python3 -m pytest -q --tb=line -n 8 -p no:cacheprovider \
    tests/ops/test_sla_triton_gpu.py -k "72"
  TAILN=6 step 300 grid_triton python3 -m pytest -q --tb=line -n 8 -p no:cacheprovider \
    "${grid[@]}" -k "not 72"
  for m in cogvideox-5b mochi-1 hunyuanvideo-1.5 hunyuanvideo; do
    left=$((end - SECONDS))
    ((left < 40)) && { echo "skip $m"; continue; }
    TAILN=4 step $left "e2e_$m" python3 benchmarks/bench_e2e.py --model $m --no-train --no-compile \
      --variants dense,slatte --warmup 1 --reps 2
  done
  ;;
part2)
  install2 || exit 1
  export PYTHONPATH=$fa4_path
  TAILN=6 step 150 grid_hopper python3 -m pytest -q --tb=line -n 4 -p no:cacheprovider \
    tests/ops/test_sla_hopper_gpu.py
  TAILN=60 step 260 bench_attention python3 benchmarks/bench_attention.py --no-sweep \
    --official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1
  ;;
ab)
  # Another tree against this one, interleaved twice on the warm machine that ran part2 (FA4
  # installed): OTHER is a folder with that tree's src/ (e.g. `git archive BRANCH src | tar -x
  # -C ab/BRANCH` here; an untracked, not ignored folder travels with the working tree).
  other=${OTHER:?OTHER=a folder holding another tree with src/}
  for round in 1 2; do
    for tree in "$PWD" "$PWD/$other"; do
      label=$([[ $tree == "$PWD" ]] && echo main || echo other)
      PYTHONPATH=$tree/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages TAILN=4 \
        step 120 "ab_${label}_$round" python3 benchmarks/bench_attention.py --quick --block-q 128 \
        --label "$label"
    done
  done
  for tree in "$PWD" "$PWD/$other"; do
    PYTHONPATH=$tree/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages TAILN=12 \
      step 90 "profile_$(basename "$tree")" python3 benchmarks/profile_sla.py --kernels hopper \
      --block-k 128 --forward-only
  done
  ;;
profile)
  # On the warm machine that ran part2 (FA4 installed).
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
  # The persistent kernels' several-tiles test, the H_i GEMM's tile options and the sweep's
  # training candidates on the GPU (the interpreter runs them in CI; their bf16 paths only here).
  TAILN=6 step 120 sparse_done_gpu python3 -m pytest -q --tb=short -n 4 -p no:cacheprovider \
    tests/ops/test_sla_sparse_done.py tests/ops/test_sla_triton.py -k "persistent or mask_gemm or candidates"
  TAILN=30 step 120 profile_hopper_fwdbwd python3 benchmarks/profile_sla.py --kernels hopper \
    --block-k 128
  TAILN=12 step 150 bench_d64 python3 benchmarks/bench_attention.py --quick --d 64 --label d64
  TAILN=40 step 280 tune_hopper_forward python3 benchmarks/tune_sla.py --kernels hopper \
    --block-k 128 --forward
  ;;
wan)
  # On the warm machine that ran part2. Issue 23's Wan goal (<= 180 ms compiled with CUDA graphs):
  # 128 x 128 blocks make "auto" take the hopper family; never run compiled with it.
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
  TAILN=8 step 500 e2e_wan_hopper python3 benchmarks/bench_e2e.py --block-k 128 --no-train \
    --variants dense,slatte --compile-modes default,reduce-overhead
  ;;
cute)
  # Our own CuTe DSL kernels (route 1 of issue 23) from another tree, on the warm machine that ran
  # part2 (its CuTe DSL install): their GPU tests, then their bench against FA4 + the Triton pass.
  other=${OTHER:?OTHER=a folder holding the tree with the CuTe DSL kernels}
  cd "$other" || exit 1
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
  # First two short cases alone: a synchronisation mistake in the fused loop shows as a hang,
  # which here costs 90 s and names its case instead of taking the whole suite's time.
  TAILN=8 step 90 cute_smoke python3 -m pytest -q --tb=short -x -p no:cacheprovider \
    tests/ops/test_sla_cute_gpu.py -k "list_lengths and (n_critical0 or n_critical1)"
  TAILN=8 step 240 cute_tests python3 -m pytest -q --tb=short -x -n 4 -p no:cacheprovider \
    tests/ops/test_sla_cute_gpu.py
  TAILN=20 step 120 cute_bench_epilogue python3 benchmarks/bench_cute_epilogue.py
  TAILN=20 step 120 cute_bench_fused python3 benchmarks/bench_cute_epilogue.py --fused
  # Hardware counters of one launch of each CuTe kernel (Firecracker machines; the clocks left
  # alone): throughput against the roofs, shared-memory bank conflicts, warp stall reasons.
  for kernel in LinearEpilogue SparseLinearForward; do
    fused=$([[ $kernel == SparseLinearForward ]] && echo --fused)
    TAILN=60 step 150 "cute_ncu_$kernel" ncu --clock-control none -k "regex:$kernel" \
      --launch-skip 3 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section LaunchStats --section Occupancy \
      python3 benchmarks/bench_cute_epilogue.py $fused
  done
  ;;
cutesums)
  # The CuTe DSL key-block sums (issue 23) from another tree, on the warm machine that ran part2:
  # their GPU tests (and the CPU layout checks), their bench against the Triton
  # `block_outer_kernel`, then the hardware counters of one launch.
  other=${OTHER:?OTHER=a folder holding the tree with the CuTe sums}
  cd "$other" || exit 1
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
  TAILN=8 step 300 cutesums_tests python3 -m pytest -q --tb=short -x -n 4 -p no:cacheprovider \
    tests/ops/test_sla_cute_sums_gpu.py tests/ops/test_sla_cute_sums_layouts.py
  TAILN=12 step 120 cutesums_bench python3 benchmarks/bench_cute_sums.py
  TAILN=60 step 150 cutesums_ncu ncu --clock-control none -k "regex:KeyBlockSums" \
    --launch-skip 3 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section LaunchStats --section Occupancy \
    python3 benchmarks/bench_cute_sums.py
  ;;
cuteop)
  # The hopper family's inference forward through both CuTe kernels (`LaunchPolicy.cute`) from
  # another tree, on the warm machine that ran part2: the op's GPU tests, then the reference
  # shape's forward side by side with the FA4 path, then its per-kernel profile.
  other=${OTHER:?OTHER=a folder holding the tree with the CuTe wiring}
  cd "$other" || exit 1
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site:$site/nvidia_cutlass_dsl/dsl_packages
  TAILN=8 step 300 cuteop_tests python3 -m pytest -q --tb=short -x -n 4 -p no:cacheprovider \
    tests/ops/test_sla_cute_op_gpu.py
  TAILN=20 step 240 cuteop_bench python3 benchmarks/bench_attention.py --quick --block-q 128 \
    --label cute
  # D = 64 (issue 23: 1.5x faster than 0.84 / 3.1 ms), where FA4's host-side launch dominated
  TAILN=20 step 150 cuteop_bench_d64 python3 benchmarks/bench_attention.py --quick --d 64 \
    --block-q 128 --label cute64
  TAILN=30 step 120 cuteop_profile python3 benchmarks/profile_sla.py --kernels hopper \
    --block-k 128 --forward-only --cute
  ;;
dense)
  # No scoring: the model is the LoRA study's start. Call again on the warm machine to go on
  # (the run resumes from its checkpoint); ~7 steps/s, so 5,000 steps take two calls.
  SCORE_EVERY=${SCORE_EVERY:-0} bash studies/gpu_train_default.sh "${SECONDS_TRAIN:-540}" full
  ;;
lora)
  # Call again with the same settings to go on where a call's time limit cut it (the study
  # resumes its runs and scores only what results.jsonl lacks).
  # The study lives in gpu_runs/ (kept on the warm machine; $OUT is new each call); what it has
  # so far is copied to $OUT/lora_study at the end of every call (cut short or not).
  dense=${DENSE:-gpu_runs/full/checkpoints/step_0005000/model}
  study=gpu_runs/lora_study
  timeout -s TERM "${SECONDS_STUDY:-560}" env PYTHONPATH="$PWD/src" python3 studies/lora_study.py \
    "$dense" --out "$study" --steps "${STEPS:-1200}" --checkpoints 3 --ranks 4,16 \
    --num-videos 50 --train-args \
    "--precision bf16 --batch-size 64 --image-batch 64 --lr 5e-4 --ema-decay 0.99 --min-snr-gamma 5 --workers 8 --compile --log-every 100"
  echo "lora_study exit code $?"
  # (at most 8 files come back from a call: the runs' own logs go as one archive)
  mkdir -p "$out/lora_study"
  cp "$study"/results.jsonl "$study"/*.png "$out/lora_study/" 2>/dev/null
  (cd "$study" && tar czf "$out/lora_study/runs.tgz" ./*.out ./*.log ./*/metrics.jsonl) 2>/dev/null
  tail -n 3 "$study"/*.log
  ;;
*)
  echo "unknown mode $what: prepare|install1|install2|part1|part2|ab|profile|wan|cute|cutesums|cuteop|dense|lora" >&2
  exit 2
  ;;
esac
