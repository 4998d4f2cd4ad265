"""Quality against training steps: score every checkpoint of one or more training runs.

    python studies/checkpoint_metrics.py RUN [RUN ...] --num-videos 100 --out metrics.jsonl

Prints (and appends to --out) one JSON line per checkpoint: run, step, and the metrics of
`common.score` on videos sampled from the checkpoint's EMA model with one fixed seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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
from slatte.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="training run folders (with checkpoints/)")
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50, help="DDPM sampling steps")
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--every", type=int, default=1, help="score every n-th checkpoint")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="append the JSON lines here too")
    add_metric_arguments(parser)
    args = parser.parse_args()
    device = device_from_args(args.device)
    metrics = metrics_from_args(args)
    for run in args.runs:
        found = checkpoints_of(run)
        if not found:
            raise SystemExit(f"checkpoint_metrics: {run} has no checkpoints")
        chosen = found[:: args.every]
        if found[-1] not in chosen:
            chosen.append(found[-1])
        real = None
        for model_dir in chosen:
            start = time.perf_counter()
            model = load_model(model_dir, device=device)
            real = real if real is not None else real_set(model, args.num_videos)
            videos, labels = sample_videos(
                model, num_videos=args.num_videos, steps=args.steps, cfg_scale=args.cfg_scale
            )
            row = {
                "run": Path(run).name,
                "step": int(model_dir.parent.name.split("_")[1]),
                "cfg_scale": args.cfg_scale,
                "sampling_steps": args.steps,
                **score(videos, labels, real, device=device, metrics=metrics),
            }
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
            log(f"{model_dir}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
