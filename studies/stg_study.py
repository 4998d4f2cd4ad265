"""STG against CFG alone on one model: every strategy, blocks early and late, several scales,
with and without rescale; the same labels and seeds for every setting.

    python studies/stg_study.py MODEL_DIR --num-videos 100 --out stg.jsonl --grid stg.png

Each setting is one JSON line (its guidance and the `common.score` metrics); `--grid` writes a
PNG with the first frames of the first videos of every setting, one row per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from common import (
    add_metric_arguments,
    device_from_args,
    log,
    metrics_from_args,
    real_set,
    sample_videos,
    score,
)
from slatte.data import write_frame_grid
from slatte.guidance import STG
from slatte.guidance.strategies import STRATEGY_NAMES
from slatte.models import load_model


def settings(
    num_blocks: int, scales: list[float], rescales: list[float], strategies: list[str]
) -> list[dict]:
    """CFG alone, then each strategy × block (first, middle, last; for alternating models that
    spans spatial and temporal blocks) × scale × rescale."""
    blocks = sorted({0, num_blocks // 2, num_blocks - 1})
    out: list[dict] = [{"strategy": None, "block": None, "stg_scale": 0.0, "rescale": 0.0}]
    for strategy, block, scale, rescale in itertools.product(strategies, blocks, scales, rescales):
        out.append({"strategy": strategy, "block": block, "stg_scale": scale, "rescale": rescale})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a slatte model directory")
    p.add_argument("--num-videos", type=int, default=100)
    p.add_argument("--steps", type=int, default=50, help="DDPM sampling steps")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--stg-scales", default="1,2", help="comma list")
    p.add_argument("--rescales", default="0,0.7", help="comma list")
    p.add_argument(
        "--strategies", default=",".join(STRATEGY_NAMES),
        help="comma list (default: all); CFG alone is always the first setting",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="JSON lines, one per setting")
    p.add_argument("--grid", default=None, help="PNG: first frames of each setting's videos")
    p.add_argument("--grid-videos", type=int, default=10)
    p.add_argument("--device", default=None)
    add_metric_arguments(p)
    args = p.parse_args()
    device = device_from_args(args.device)
    metrics = metrics_from_args(args)
    model = load_model(args.model, device=device)
    real = real_set(model, args.num_videos)
    scales = [float(s) for s in args.stg_scales.split(",")]
    rescales = [float(r) for r in args.rescales.split(",")]
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(STRATEGY_NAMES))
    if unknown:
        p.error(f"--strategies: unknown {unknown}; allowed: {', '.join(STRATEGY_NAMES)}")
    rows = []
    for setting in settings(len(model.blocks), scales, rescales, strategies):
        stg = ()
        if setting["strategy"] is not None:
            stg = (STG(setting["stg_scale"], (setting["block"],), setting["strategy"]),)
        videos, labels = sample_videos(
            model,
            num_videos=args.num_videos,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            stg=stg,
            rescale=setting["rescale"],
        )
        record = {
            "cfg_scale": args.cfg_scale,
            **setting,
            **score(videos, labels, real, device=device, metrics=metrics),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        log(json.dumps(record))
        rows.append(videos[: args.grid_videos, 0])  # (K, C, H, W): first frame of each video
    if args.grid:
        write_frame_grid(args.grid, [torch.stack(list(r)) for r in rows])


if __name__ == "__main__":
    main()
