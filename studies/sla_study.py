"""SLA on our data, as the SLA paper's ablation: fine-tune one dense full-attention model with
each attention variant for the same steps and seeds, then score every checkpoint.

    python studies/sla_study.py DENSE_MODEL_DIR --out runs/sla_study --steps 2000 \
        --train-args "--precision bf16 --batch-size 64 --lr 1e-4 --workers 8"

Variants: `dense` (full attention, fine-tuned the same steps), `sla` (5% critical, 10%
negligible, learned projection), `sparse` (5% critical, 95% negligible: nearly sparse only),
`linear` (linear attention only), `no_proj` (SLA with a fixed identity projection), and `sla@S`
for each sparsity S of `--sparsities` (critical = 1 - S). The dense
model itself is scored as step 0 of every variant. Each fine-tuning run is `slatte train
--init-from`, run `--jobs` at a time. Writes `OUT/results.jsonl`: one line per checkpoint with
the metrics of `common.score` and `attention_error`, the mean relative L2 distance between each
attention layer's output and dense attention's on the same q, k, v (real clips, t = 500).
Run again with the same arguments after being cut short, the study resumes its runs from their
checkpoints and scores only the checkpoints `OUT/results.jsonl` lacks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from common import (
    add_metric_arguments,
    checkpoints_of,
    device_from_args,
    log,
    metrics_from_args,
    real_set,
    sample_videos,
    score,
)
from slatte.diffusion import create_diffusion
from slatte.models import VideoDiT, load_model
from slatte.ops import attention
from slatte.training.checkpoint import latest_checkpoint

FIXED = {
    # Dense attention fine-tuned alike: separates what the extra steps do from what SLA does.
    "dense": ["--attention", "sdpa"],
    "sla": ["--attention", "sla", "--sla-critical", "0.05", "--sla-negligible", "0.10"],
    # At 64 key blocks this computes 3, skips 60 and leaves 1 to the linear branch (0.99 would
    # skip all 61); docs/results were measured with it, so it stays.
    "sparse": ["--attention", "sla", "--sla-critical", "0.05", "--sla-negligible", "0.95"],
    "linear": ["--attention", "linear"],
    "no_proj": ["--attention", "sla", "--sla-critical", "0.05", "--sla-projection", "identity"],
}


def variants(sparsities: list[float]) -> dict[str, list[str]]:
    out = dict(FIXED)
    for s in sparsities:
        critical = round(1.0 - s, 4)
        out[f"sla@{s:g}"] = ["--attention", "sla", "--sla-critical", str(critical)]
    return out


def attention_error(model: VideoDiT, real: torch.Tensor, device: str) -> float:
    """Mean over attention layers of ||O - O_dense|| / ||O_dense|| on noised real clips."""
    errors: list[float] = []
    originals = {}
    for block in model.blocks:
        attn = block.attn
        originals[attn] = attn._attend

        def both(q, k, v, attn=attn):
            out = originals[attn](q, k, v)
            dense = attention(q, k, v, backend="sdpa")
            errors.append(float((out - dense).norm() / dense.norm().clamp_min(1e-12)))
            return out

        attn._attend = both
    try:
        x0 = real[:16].to(device)
        t = torch.full((x0.shape[0],), 500, device=device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
        x_t = create_diffusion().q_sample(x0, t, noise)
        labels = torch.arange(x0.shape[0], device=device) % model.config.num_classes
        with torch.no_grad():
            model(x_t, t, labels)
    finally:
        for attn, fn in originals.items():
            attn._attend = fn
    return sum(errors) / len(errors)


def train_command(
    model: str, run_dir: Path, steps: int, every: int, device: str, flags: list[str]
) -> list[str] | None:
    """`slatte train` fine-tuning `model` into `run_dir`, keeping a checkpoint every `every`; a
    study cut short (a time limit, a lost machine) goes on where its runs stopped: None for a run
    that reached `steps`, `--resume` for one with a checkpoint (its flags are in it), and a
    fresh start over what a run killed before its first checkpoint left (moved aside)."""
    cli = [sys.executable, "-m", "slatte.cli", "train", "--out", str(run_dir), "--device", device]
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        if int(latest.name.split("_")[1]) >= steps:
            return None
        return [*cli, "--resume"]
    fresh = ["--overwrite"] if run_dir.exists() and any(run_dir.iterdir()) else []
    return [*cli, *fresh, "--init-from", model, "--steps", str(steps), "--ckpt-every", str(every),
            "--keep-checkpoints", "0", *flags]  # fmt: skip


def recorded(results: Path) -> list[dict[str, Any]]:
    """The rows an earlier call of the study already scored (OUT/results.jsonl), so that a
    resumed study scores only what is missing."""
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def fine_tune_all(commands: dict[str, list[str]], out: Path, jobs: int) -> None:
    """Run each named command, `jobs` at a time, its stdout in OUT/NAME.out and its stderr in
    OUT/NAME.log; stops at the first that fails. Stopped itself (SIGTERM, as `timeout` sends,
    or Ctrl-C), it passes SIGTERM on to the runs still going, each of which then saves a
    checkpoint to resume from, and waits for them."""
    pending = list(commands.items())
    running: list[tuple[str, subprocess.Popen, list[IO[str]]]] = []
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name, cmd = pending.pop(0)
                log(f"fine-tuning {name}: {shlex.join(cmd)}")
                stem = out / name.replace("@", "_")
                files = [open(f"{stem}.out", "w"), open(f"{stem}.log", "w")]  # noqa: SIM115
                proc = subprocess.Popen(cmd, stdout=files[0], stderr=files[1])
                running.append((name, proc, files))
            name, proc, files = running[0]
            code = proc.wait()
            running.pop(0)
            for f in files:
                f.close()
            if code != 0:
                raise SystemExit(f"fine-tuning {name} failed; see its log in {out}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, proc, files in running:
            proc.terminate()
            proc.wait()
            for f in files:
                f.close()


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a study that fine-tunes variants of one dense model and scores them."""
    p.add_argument("model", help="the dense full-attention model directory")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000, help="fine-tuning steps per variant")
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints per run (scored)")
    p.add_argument("--train-args", default="", help="passed on to every `slatte train`")
    p.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at a time")
    p.add_argument("--num-videos", type=int, default=100)
    p.add_argument("--sampling-steps", type=int, default=50)
    p.add_argument("--device", default=None)
    add_metric_arguments(p)


def run_study(
    args: argparse.Namespace,
    chosen: dict[str, list[str]],
    *,
    load: Callable[[Path, str], VideoDiT] = lambda path, device: load_model(path, device=device),
    run_figures: Callable[[str, Path], dict[str, Any]] = lambda name, run_dir: {},
) -> list[dict[str, Any]]:
    """Fine-tune `args.model` once per variant (`slatte train` flags), then score the dense
    model (step 0) and every checkpoint (loaded by `load`), each row with `run_figures` of its
    run; rows go to OUT/results.jsonl as they come and are returned."""
    device = device_from_args(args.device)
    metrics = metrics_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every = max(args.steps // args.checkpoints, 1)
    run_dirs = {name: out / name.replace("@", "_") for name in chosen}
    commands = {
        name: train_command(args.model, run_dirs[name], args.steps, every, device,
                            [*flags, *shlex.split(args.train_args)])
        for name, flags in chosen.items()
    }  # fmt: skip
    fine_tune_all({name: cmd for name, cmd in commands.items() if cmd is not None}, out, args.jobs)

    dense = load_model(args.model, device=device)
    real = real_set(dense, args.num_videos)
    rows = recorded(out / "results.jsonl")
    done = {(row["variant"], row["step"]) for row in rows}

    def record(variant: str, step: int, model: VideoDiT, figures: dict[str, Any]) -> None:
        if (variant, step) in done:
            return
        videos, labels = sample_videos(model, num_videos=args.num_videos, steps=args.sampling_steps)
        row = {
            "variant": variant,
            "step": step,
            **score(videos, labels, real, device=device, metrics=metrics),
            "attention_error": attention_error(model, real, device),
            **figures,
        }
        rows.append(row)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(json.dumps(row))

    record("dense", 0, dense, {})
    for name, run_dir in run_dirs.items():
        figures = run_figures(name, run_dir)
        for model_dir in checkpoints_of(run_dir):
            step = int(model_dir.parent.name.split("_")[1])
            if (name, step) not in done:
                record(name, step, load(model_dir, device), figures)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(p)
    p.add_argument("--variants", default="dense,sla,sparse,linear,no_proj")
    p.add_argument("--sparsities", default="0.8,0.9,0.95,0.97", help="sla@S runs ('' = none)")
    args = p.parse_args()
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    wanted = set(args.variants.split(","))
    run_study(args, {k: v for k, v in variants(sparsities).items() if k in wanted or "@" in k})


if __name__ == "__main__":
    main()
