"""A small video encoder trained on moving digits, whose features a Fréchet distance compares.

Supervised on what a moving-digit video is about: the digit's class, the direction it starts
moving in (8 bins) and its speed. The 64-d penultimate activations are the features, so a
generated set is far from the real one when its digits are wrong or illegible, when they move
differently or not at all, or when their look (blur, noise, broken strokes) differs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .videos import EVAL_SIZE, to_eval_frames
from .weights_io import load_net

__all__ = ["VideoEncoder", "encode_videos", "load_video_encoder", "NUM_DIRECTIONS"]

NUM_DIRECTIONS = 8  # bins of the initial velocity's angle


class VideoEncoder(nn.Module):
    """3-D convnet over grey clips (B, 1, F, 32, 32) in [-1, 1].

    ``features`` gives (B, feature_dim); ``forward`` gives the heads' outputs (class logits,
    direction logits, speed). Global pooling over time and space lets it read any clip length
    of at least 4 frames, but distances are only comparable between sets of one length.
    """

    def __init__(self, width: int = 16, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1 or feature_dim < 1:
            raise ValueError(f"need width >= 1 and feature_dim >= 1, got {width}, {feature_dim}")

        def block(c_in: int, c_out: int, stride: tuple[int, int, int]) -> list[nn.Module]:
            conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            return [conv, nn.BatchNorm3d(c_out), nn.ReLU()]

        w = width
        self.trunk = nn.Sequential(
            *block(1, w, (1, 2, 2)),  # (F, 16, 16)
            *block(w, 2 * w, (2, 2, 2)),  # (F/2, 8, 8)
            *block(2 * w, 4 * w, (2, 2, 2)),  # (F/4, 4, 4)
            *block(4 * w, 8 * w, (1, 1, 1)),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(8 * w, feature_dim),
            nn.ReLU(),
        )
        self.class_head = nn.Linear(feature_dim, num_classes)
        self.direction_head = nn.Linear(feature_dim, NUM_DIRECTIONS)
        self.speed_head = nn.Linear(feature_dim, 1)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        return self.trunk(clips)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(clips)
        return self.class_head(h), self.direction_head(h), self.speed_head(h).squeeze(-1)


def load_video_encoder(
    name_or_path: str | Path = "video_encoder", device: str | torch.device = "cpu"
) -> VideoEncoder:
    """The shipped video encoder (default) or one saved by ``slatte.eval.train``."""
    return load_net(VideoEncoder, name_or_path, device)


@torch.no_grad()
def encode_videos(
    videos: torch.Tensor, *, encoder: VideoEncoder | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Features (B, feature_dim) float64 of videos (B, F, C, H, W) in [-1, 1], F >= 4."""
    encoder = encoder if encoder is not None else load_video_encoder()
    clips = to_eval_frames(videos, EVAL_SIZE).transpose(1, 2)  # (B, 1, F, 32, 32)
    if clips.shape[2] < 4:
        raise ValueError(f"the video encoder needs >= 4 frames, got {clips.shape[2]}")
    device = next(encoder.parameters()).device
    out = [
        encoder.features(clips[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(clips), batch_size)
    ]
    return torch.cat(out).double()
