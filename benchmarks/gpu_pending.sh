#!/usr/bin/env bash
# The GPU runs the open issues still need (23: hopper grid, attention_h100.json, profile, epilogue
# tiles, Wan e2e; 24: the D = 72 grid and every model's native-shape forward; 25: the search's
# signal on a Wan2.1-shaped model; 26: LoRA costs), as two calls made back to back on one warm
# machine (the cu13 CuTe DSL libraries are larger than one call carries) and an optional third.
#
# Here, once (downloads the wheels into the git-ignored .whl/ and gpu_runs/; the official SLA
# branches `main` and `SLA-1` of github.com/thu-ml/SLA go into .external/sla_official_{main,sla_1}):
#   bash benchmarks/gpu_pending.sh prepare
# Then, with run's carry:
#   part1  carry gpu_runs/x1 gpu_runs/w1 .external   (no FlashAttention-4: Triton grid, models)
#   part2  carry gpu_runs/x2 gpu_runs/w2 .external   (installs FA4: hopper grid, bench, LoRA)
#   part3  (same warm machine, nothing carried)      (hopper profile, epilogue tiles, Wan e2e)
# Logs go to $OUT (or ./gpu_logs); each step prints its exit code, time and last lines. END (seconds,
# default 570) is when a part stops starting its optional steps (e2e models, LoRA costs).
set -uo pipefail
what=${1:?usage: gpu_pending.sh prepare|part1|part2|part3}
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
part1)
  cp gpu_runs/x1 /tmp/cu13.x1
  pipi gpu_runs/w1/*.whl || exit 1
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$site
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  TAILN=6 step 220 grid_triton python3 -m pytest -q --tb=line -n 8 -p no:cacheprovider "${grid[@]}"
  TAILN=4 step 90 cuda_tests python3 -m pytest -q --tb=line -p no:cacheprovider \
    tests/integrations/test_diffusers_sla.py tests/integrations/test_diffusers_gelu.py -k "cuda or head_dim or gelu"
  TAILN=8 step 120 stg_search python3 benchmarks/bench_stg_search.py --blocks 0,10,20,29
  for m in wan2.2-5b wan-vace-1.3b skyreels-v2-1.3b ltx-2 cogvideox-5b mochi-1 hunyuanvideo-1.5 \
    hunyuanvideo; do
    left=$((end - SECONDS))
    ((left < 40)) && { echo "skip $m"; continue; }
    TAILN=4 step $left "e2e_$m" python3 benchmarks/bench_e2e.py --model $m --no-train --no-compile \
      --variants dense,slatte --warmup 1 --reps 2
  done
  ;;
part2)
  [[ -f /tmp/cu13.x1 ]] || { echo "no first half here: run part1 on this machine first"; exit 1; }
  pipi gpu_runs/w2/*.whl || exit 1
  # After pip (whose --upgrade replaces whole package folders): the libraries join nvidia_cutlass_dsl/.
  cat /tmp/cu13.x1 gpu_runs/x2 |
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" |
    tar -x -C "$site" || exit 1
  export PYTHONPATH=$fa4_path
  python3 -c "import flash_attn.cute.interface; print('flash-attn-4 imports')" 2>&1 | tail -2
  TAILN=6 step 150 grid_hopper python3 -m pytest -q --tb=line -n 4 -p no:cacheprovider \
    tests/ops/test_sla_hopper_gpu.py
  TAILN=60 step 260 bench_attention python3 benchmarks/bench_attention.py --no-sweep \
    --official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1
  # Issue 26's costs: trainable parameters, peak memory and step time of each way to fine-tune SLA
  # at 95% on the full-attention digits model at the same batch.
  for v in "full:" "lora4:--lora-rank 4 --trainable lora+sla" "lora16:--lora-rank 16 --trainable lora+sla" \
    "sla_only:--trainable sla"; do
    name=${v%%:*}
    left=$(((end - SECONDS) / 2 > 60 ? 60 : (end - SECONDS) / 2))
    ((left < 20)) && { echo "skip lora $name"; continue; }
    # shellcheck disable=SC2086  # the variant's flags are words
    TAILN=3 step $left "lora_$name" python3 -m slatte.cli train \
      --init-from src/slatte/pretrained/latte-digits-full-sla --out "/tmp/lora_$name" --overwrite \
      --steps 100 --batch-size 64 --image-batch 64 --precision bf16 --attention sla \
      --sla-critical 0.05 --lr 5e-4 --log-every 25 --workers 4 --sample-steps 5 ${v#*:}
  done
  ;;
part3)
  export PYTHONPATH=$fa4_path
  TAILN=14 step 90 profile_hopper_fwd python3 benchmarks/profile_sla.py --kernels hopper --block-k 128 \
    --forward-only
  TAILN=20 step 120 profile_hopper python3 benchmarks/profile_sla.py --kernels hopper --block-k 128
  TAILN=20 step 200 tune_hopper python3 benchmarks/tune_sla.py --kernels hopper --block-k 128 --forward
  TAILN=12 step $((580 - SECONDS)) e2e_wan python3 benchmarks/bench_e2e.py --no-train \
    --variants dense,slatte --compile-modes default,reduce-overhead --block-k 128
  ;;
*)
  echo "unknown mode $what: prepare|part1|part2|part3" >&2
  exit 2
  ;;
esac
