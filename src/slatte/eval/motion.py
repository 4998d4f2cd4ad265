"""Motion smoothness: does the digit's centre of mass move in a straight line between bounces?

A moving digit travels at constant velocity and reflects off the frame borders. Per axis the
centre-of-mass track c_t is then linear except at a bounce, so its second difference
a_t = c_{t+1} - 2 c_t + c_{t-1} is zero (up to the ±1 px of drawing at whole pixels) except
near a bounce, where it points away from the wall. A frame on an axis is "explained" when
|a_t| is at most ``tolerance`` pixels, or when it is a bounce: c_t lies within one step (the
axis' median speed + 1 px) of the track's extreme on that axis and a_t points back inside.
Smoothness is the fraction of explained (frame, axis) pairs; the residual is the mean |a_t|
over the pairs that are not bounces. Positions are measured in a 32-px frame whatever the
video's size, so numbers are comparable across sizes. This assumes one digit per video.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .videos import EVAL_SIZE, to_eval_frames

__all__ = ["MotionSmoothness", "centre_of_mass", "motion_smoothness"]

DEFAULT_TOLERANCE = 1.5  # px in a 32-px frame: rounding to whole pixels gives |a| <= 1


def centre_of_mass(videos: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """(B, F, 2) centre of brightness (y, x) in pixels of a ``size`` frame.

    The background is each frame's median brightness, subtracted first, so a grey or noisy
    background does not pull the centre towards the middle. An empty frame gives the centre.
    """
    frames = (to_eval_frames(videos, size)[:, :, 0] + 1.0) / 2.0  # (B, F, H, W) in [0, 1]
    background = frames.flatten(2).median(dim=2).values[..., None, None]
    weight = (frames - background).clamp(min=0.0)
    total = weight.sum(dim=(2, 3))
    coords = torch.arange(size, dtype=frames.dtype)
    y = (weight.sum(3) * coords).sum(2)
    x = (weight.sum(2) * coords).sum(2)
    centre = torch.stack([y, x], dim=-1) / total.clamp(min=1e-6)[..., None]
    middle = torch.full_like(centre, (size - 1) / 2)
    return torch.where((total > 1e-6)[..., None], centre, middle)


@dataclass(frozen=True)
class MotionSmoothness:
    """smoothness in [0, 1] (higher is smoother), per-video scores, mean residual in px."""

    smoothness: float
    residual_px: float
    per_video: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def motion_smoothness(
    videos: torch.Tensor, *, tolerance: float = DEFAULT_TOLERANCE
) -> MotionSmoothness:
    """Score videos (B, F, C, H, W) in [-1, 1] of one moving digit each; needs F >= 3."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 px, got {tolerance}")
    track = centre_of_mass(videos).double()  # (B, F, 2)
    if track.shape[1] < 3:
        raise ValueError(f"motion smoothness needs >= 3 frames, got {track.shape[1]}")
    velocity = track.diff(dim=1)  # (B, F-1, 2)
    accel = velocity.diff(dim=1)  # (B, F-2, 2), at frames 1 .. F-2
    inner = track[:, 1:-1]
    step = velocity.abs().median(dim=1, keepdim=True).values + 1.0  # (B, 1, 2)
    low = track.min(dim=1, keepdim=True).values
    high = track.max(dim=1, keepdim=True).values
    # A bounce reverses the direction on its axis within one frame of t (a stop at the wall,
    # v = 0, counts). A reversal just before the first or after the last frame is not seen,
    # so the outermost inner frames need none.
    moving = (velocity[:, 1:] != 0) | (velocity[:, :-1] != 0)
    flip = (velocity[:, 1:] * velocity[:, :-1] <= 0) & moving  # (B, F-2, 2): v_{t-1} vs v_t
    near_flip = flip.clone()
    near_flip[:, 1:] |= flip[:, :-1]
    near_flip[:, :-1] |= flip[:, 1:]
    near_flip[:, [0, -1]] = True
    at_wall = ((inner - low <= step) & (accel > 0)) | ((high - inner <= step) & (accel < 0))
    bounce = at_wall & near_flip & (accel.abs() <= 2 * step)
    explained = bounce | (accel.abs() <= tolerance)
    per_video = explained.double().mean(dim=(1, 2))
    not_bounce = ~bounce
    residual = (accel.abs() * not_bounce).sum() / not_bounce.sum().clamp(min=1)
    return MotionSmoothness(
        smoothness=per_video.mean().item(),
        residual_px=residual.item(),
        per_video=per_video.tolist(),
    )
