"""Side-by-side frame strips: the same labels and seed sampled from several models.

    python studies/frame_strips.py DENSE_MODEL latte-digits-full-sla --labels 3,8 \
        --out docs/sla_vs_dense_frames.png

Each model (a model directory or a shipped model's name) samples the same labels with the same
seed and sampler; the PNG has one row per (model, label), models in the order given, every
frame of the video side by side, and the row order is printed. On a CPU an SLA model runs the
reference implementation (full N x N matrices), which is slow: a few minutes per video.
"""

from __future__ import annotations

import argparse

import torch

from common import log, sample_videos
from slatte.cli import resolve_model_dir
from slatte.data import write_frame_grid
from slatte.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model directories or shipped model names")
    p.add_argument("--labels", default="0,1", help="comma list of classes, one row each")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args()
    labels = [int(x) for x in args.labels.split(",") if x]
    rows = []
    for name in args.models:
        model = load_model(resolve_model_dir(name))
        videos, _ = sample_videos(
            model,
            num_videos=len(labels),
            labels=tuple(labels),
            steps=args.steps,
            sampler=args.sampler,
            cfg_scale=args.cfg_scale,
            seed=args.seed,
        )
        for label, video in zip(labels, videos, strict=True):
            rows.append(video)
            print(f"row {len(rows)}: {name}, label {label}")
        log(f"{name}: sampled")
    write_frame_grid(args.out, torch.stack(rows), padding=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
