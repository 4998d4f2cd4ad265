#!/usr/bin/env bash
# One GPU call: train the candidate default models side by side on one GPU for SECONDS
# (resuming where a warm machine's gpu_runs/ already has them), then score their checkpoints.
# Usage (repo root): bash studies/gpu_train_default.sh SECONDS RUN...   (RUN: latte, latte_m, full)
# INIT_FROM=DIR starts a run that has no checkpoint here from a model directory (e.g. weights
# brought back from an earlier machine) instead of from scratch.
# Results under $OUT: <run>.tgz (metrics.jsonl, loss_curve.png, the latest EMA model),
# train_<run>.log, and steps.jsonl with the quality of every other checkpoint.
# The GPU runs one process at a time at full speed (processes sharing it are time-sliced), so
# several runs in one call only make sense for runs that are small next to the GPU.
set -uo pipefail
seconds=$1; shift
out=${OUT:-gpu_out}
mkdir -p "$out" gpu_runs
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1  # a caller may point at another tree
# Min-SNR-5 and labels initialised at std 1 (ADM) since session 3: with DiT's 0.02 the label
# embedding had barely moved after 3,000 steps and conditional and unconditional predictions
# were the same (benchmarks/NOTES.md).
recipe=(--steps 200000 --batch-size 128 --image-batch 128 --lr 5e-4 --warmup-steps 200
  --min-snr-gamma 5 --model-option class_embed_init_std=1.0 --ema-decay 0.999 --precision bf16 --compile --workers ${WORKERS:-12} --ckpt-every ${CKPT_EVERY:-500} --keep-checkpoints 0
  --log-every 100)
declare -A model=(
  [latte]=""
  [latte_m]="--model-option depth=6 --model-option hidden_size=192 --model-option num_heads=3"
  [full]="--block-pattern full"
)
for run in "$@"; do
  # A run with a checkpoint here continues with the flags it was started with (`--resume` keeps
  # them; giving the model's again is refused); SIGTERM at the time limit saves a checkpoint.
  if [[ -f gpu_runs/$run/latest ]]; then args=(--resume)
  else
    # shellcheck disable=SC2206
    args=("${recipe[@]}" ${model[$run]})
    [[ -n ${INIT_FROM:-} ]] && args+=(--init-from "$INIT_FROM")
  fi
  timeout "$seconds" python3 -m slatte.cli train --out "gpu_runs/$run" "${args[@]}" \
    > "$out/train_$run.log" 2>&1 &
done
wait
# SCORE_EVERY=0: no scoring (a model trained to start another study from)
for run in "$@"; do
  [[ ${SCORE_EVERY:-2} == 0 ]] && break
  python3 studies/checkpoint_metrics.py "gpu_runs/$run" --every ${SCORE_EVERY:-2} --num-videos 100 \
    --out "$out/steps.jsonl" > /dev/null 2> "$out/metrics_$run.log" &
done
wait
for run in "$@"; do
  latest=$(cat "gpu_runs/$run/latest")
  tar czf "$out/$run.tgz" -C "gpu_runs/$run" metrics.jsonl loss_curve.png train_config.json \
    "checkpoints/$latest/model"
  tr '\r' '\n' < "$out/train_$run.log" | grep -v '^train:' | tail -n 5
  tr '\r' '\n' < "$out/train_$run.log" | grep clips_s | tail -n 1
done
if [[ -f $out/steps.jsonl ]]; then cat "$out/steps.jsonl"; fi
