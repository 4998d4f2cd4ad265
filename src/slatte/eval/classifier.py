"""Digit accuracy of videos: a small frame classifier, per-frame and per-video scores.

A video of a moving digit is right when its frames show the digit it was asked for, and the
digit must not change over time. So besides the per-frame accuracy this reports the video's
class (mean log-probability over frames), whether every frame agrees with it (temporal
consistency), and the strict per-video accuracy: every frame shows the requested digit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .videos import EVAL_SIZE, to_eval_frames
from .weights_io import load_net

__all__ = [
    "DigitAccuracy",
    "FrameClassifier",
    "digit_accuracy",
    "frame_log_probs",
    "load_classifier",
]


class FrameClassifier(nn.Module):
    """Convnet over grey frames (N, 1, 32, 32) in [-1, 1] -> logits (N, num_classes).

    The frames are first averaged down to 16 px: the source digits are 8×8 images, so nothing
    is lost at the default geometry, and it makes the net cheap enough for CPU evaluation.
    Global average pooling before the head makes the prediction independent of where the digit
    sits in the frame, which is what a moving digit needs.
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1 or num_classes < 2:
            raise ValueError(f"need width >= 1 and num_classes >= 2, got {width}, {num_classes}")

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(c_out), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            nn.AvgPool2d(2),  # 32 -> 16
            *block(1, w), *block(w, 2 * w), nn.MaxPool2d(2),  # 16 -> 8
            *block(2 * w, 4 * w), nn.MaxPool2d(2),  # 8 -> 4
            *block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames))


def load_classifier(
    name_or_path: str | Path = "classifier", device: str | torch.device = "cpu"
) -> FrameClassifier:
    """The shipped digit classifier (default) or one saved by ``slatte.eval.train``."""
    return load_net(FrameClassifier, name_or_path, device)


@torch.no_grad()
def frame_log_probs(
    classifier: FrameClassifier, videos: torch.Tensor, *, batch_size: int = 1024
) -> torch.Tensor:
    """Per-frame log-probabilities (B, F, num_classes) of videos (B, F, C, H, W) in [-1, 1]."""
    frames = to_eval_frames(videos, EVAL_SIZE)
    b, f = frames.shape[:2]
    flat = frames.flatten(0, 1)
    device = next(classifier.parameters()).device
    out = [
        classifier(flat[i : i + batch_size].to(device)).log_softmax(-1).cpu()
        for i in range(0, len(flat), batch_size)
    ]
    return torch.cat(out).reshape(b, f, -1)


@dataclass(frozen=True)
class DigitAccuracy:
    """Scores of a set of videos; accuracies are None when no labels were given.

    frame_accuracy: fraction of all frames classified as the video's label.
    video_accuracy: fraction of videos whose class (mean frame log-probability) is the label.
    video_accuracy_strict: fraction of videos whose every frame is classified as the label.
    temporal_consistency: fraction of videos whose frames all agree on one class (label-free).
    class_histogram: how many videos were assigned each class.
    """

    num_videos: int
    num_frames: int
    frame_accuracy: float | None
    video_accuracy: float | None
    video_accuracy_strict: float | None
    temporal_consistency: float
    class_histogram: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def digit_accuracy(
    videos: torch.Tensor,
    labels: torch.Tensor | list[int] | None = None,
    *,
    classifier: FrameClassifier | None = None,
) -> DigitAccuracy:
    """Classify every frame of ``videos`` (B, F, C, H, W) in [-1, 1] and score against labels."""
    classifier = classifier if classifier is not None else load_classifier()
    log_probs = frame_log_probs(classifier, videos)  # (B, F, K)
    frame_pred = log_probs.argmax(-1)  # (B, F)
    video_pred = log_probs.mean(1).argmax(-1)  # (B,)
    consistent = (frame_pred == video_pred[:, None]).all(1)
    num_classes = log_probs.shape[-1]
    histogram = torch.bincount(video_pred, minlength=num_classes).tolist()
    b, f = frame_pred.shape
    if labels is None:
        return DigitAccuracy(b, f, None, None, None, consistent.float().mean().item(), histogram)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.shape != (b,):
        raise ValueError(f"need one label per video: {b} videos, got {labels.numel()} labels")
    if ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(
            f"labels must be in [0, {num_classes}), got {sorted(set(labels.tolist()))}"
        )
    right = frame_pred == labels[:, None]
    return DigitAccuracy(
        num_videos=b,
        num_frames=f,
        frame_accuracy=right.float().mean().item(),
        video_accuracy=(video_pred == labels).float().mean().item(),
        video_accuracy_strict=right.all(1).float().mean().item(),
        temporal_consistency=consistent.float().mean().item(),
        class_histogram=histogram,
    )
