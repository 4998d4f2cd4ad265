"""Moving digits: the embedded default dataset, made on the fly from scikit-learn's UCI digits.

Each item is a short clip of one or two handwritten digits (8×8 greyscale images that
scikit-learn ships, upscaled) moving at constant velocity and bouncing off the frame borders.
Nothing is downloaded and nothing is stored: ``dataset[i]`` is a pure function of
``(seed, split, i)``, so the same index gives the same clip in every process and DataLoader
worker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["MovingDigits", "Trajectory", "NUM_SOURCE_IMAGES"]

NUM_SOURCE_IMAGES = 1797  # images in sklearn.datasets.load_digits
# The train/test partition of source images must not depend on the dataset seed: a train set
# and a test set built with different seeds still have to be disjoint.
_SPLIT_SEED = 20_240_501
_TRAIN_FRACTION = 0.8
_SPLITS = ("train", "test")


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All source images as float32 in [0, 1], shape (1797, 8, 8), and their targets."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return images, digits.target.astype(np.int64)


@functools.cache
def _split_indices(split: str) -> np.ndarray:
    """Indices into the source images that belong to ``split`` (sorted)."""
    perm = np.random.default_rng(_SPLIT_SEED).permutation(NUM_SOURCE_IMAGES)
    n_train = int(round(_TRAIN_FRACTION * NUM_SOURCE_IMAGES))
    chosen = perm[:n_train] if split == "train" else perm[n_train:]
    return np.sort(chosen)


@dataclass(frozen=True)
class Trajectory:
    """Motion of the digits in one clip; arrays are indexed (digit, frame, axis), axis = (y, x).

    ``positions`` are the exact top-left corners of the digit boxes in pixels (float);
    ``pixel_positions`` are the rounded corners at which the digits are drawn. ``velocities[d, t]``
    is the displacement the digit makes from frame t to frame t + 1 (pixels/frame); a component
    flips sign at each bounce. ``source_indices`` index ``sklearn.datasets.load_digits()``;
    ``labels`` are their targets.
    """

    positions: np.ndarray  # (D, F, 2) float64
    pixel_positions: np.ndarray  # (D, F, 2) int64
    velocities: np.ndarray  # (D, F, 2) float64
    source_indices: np.ndarray  # (D,) int64
    labels: np.ndarray  # (D,) int64


def _bounce(start: np.ndarray, velocity: np.ndarray, num_frames: int, span: int):
    """Closed-form reflection of ``start + velocity * t`` into [0, span] per axis.

    Unfolding the reflections turns the bouncing motion into a straight line; folding that line
    with period 2·span gives the position, exact for any speed (even several bounces per frame).
    Returns positions and velocities, each (F, 2).
    """
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    if span == 0:  # the digit fills the frame: it cannot move
        zeros = np.zeros((num_frames, 2))
        return zeros, zeros.copy()
    unfolded = start[None, :] + velocity[None, :] * t
    phase = np.mod(unfolded, 2 * span)
    forward = phase < span
    positions = np.where(forward, phase, 2 * span - phase)
    # The displacement to the next frame keeps the unfolded direction on the rising half of the
    # fold and reverses it on the falling half.
    velocities = np.where(forward, velocity[None, :], -velocity[None, :])
    return positions, velocities


class MovingDigits(Dataset):
    """Clips of handwritten digits moving at constant velocity and bouncing off the borders.

    Items are ``{"video": (F, 1, size, size) float32 in [-1, 1], "label": int}`` with a black
    background (-1). The label is the digit's class (``num_classes == 10``). Two-digit clips
    have no single class: their label is -1 and the instance's ``num_classes`` is 0 (unlabelled);
    both digits' classes are in :meth:`trajectory`. Overlapping digits combine with a pixel-wise
    maximum.

    The split is by source image: a fixed permutation of the 1797 images puts 80% in ``"train"``
    and 20% in ``"test"``, the same for every ``seed``, so no image appears in both.

    Args:
        split: ``"train"`` or ``"test"``.
        num_frames: frames per clip (≥ 1).
        size: frame height and width in pixels.
        digit_size: side of the upscaled digit box (1 ≤ digit_size ≤ size).
        num_digits: 1 or 2.
        speed: pixels per frame, a number or a ``(low, high)`` range drawn uniformly per digit.
        length: number of items.
        seed: makes a different but equally deterministic set of clips.
    """

    num_classes = 10
    channels = 1

    def __init__(
        self,
        split: str = "train",
        *,
        num_frames: int = 16,
        size: int = 32,
        digit_size: int = 16,
        num_digits: int = 1,
        speed: float | tuple[float, float] = (1.0, 3.0),
        length: int = 10_000,
        seed: int = 0,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 1 <= digit_size <= size:
            raise ValueError(f"digit_size must be in [1, size={size}], got {digit_size}")
        if num_digits not in (1, 2):
            raise ValueError(f"num_digits must be 1 or 2, got {num_digits}")
        pair = (speed, speed) if isinstance(speed, int | float) else tuple(speed)
        if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
            raise ValueError(
                f"speed must be a number >= 0 or a range (low, high) with 0 <= low <= high, "
                f"got {speed!r}"
            )
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split = split
        self.num_frames = num_frames
        self.size = size
        self.digit_size = digit_size
        self.num_digits = num_digits
        if num_digits == 2:
            self.num_classes = 0  # unlabelled: shadows the class attribute for this instance
        self.speed = (float(pair[0]), float(pair[1]))
        self.length = length
        self.seed = seed
        self._sources = _split_indices(split)

    def __repr__(self) -> str:
        return (
            f"MovingDigits(split={self.split!r}, num_frames={self.num_frames}, size={self.size}, "
            f"digit_size={self.digit_size}, num_digits={self.num_digits}, speed={self.speed}, "
            f"length={self.length}, seed={self.seed})"
        )

    def __len__(self) -> int:
        return self.length

    @property
    def source_indices(self) -> np.ndarray:
        """Indices into ``load_digits()`` of the images this split draws from."""
        return self._sources.copy()

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for a dataset of length {self.length}")
        return index

    def trajectory(self, index: int) -> Trajectory:
        """The motion, source images and labels behind ``self[index]``."""
        index = self._check_index(index)
        # A per-item generator seeded by (seed, split, index): no global RNG, so the clip does
        # not depend on which worker or process builds it, or in which order.
        rng = np.random.default_rng([self.seed, _SPLITS.index(self.split), index])
        span = self.size - self.digit_size
        _, targets = _load_digits()
        positions, velocities, sources = [], [], []
        for _ in range(self.num_digits):
            sources.append(self._sources[rng.integers(len(self._sources))])
            start = rng.uniform(0.0, span, size=2)
            angle = rng.uniform(0.0, 2 * np.pi)
            speed = rng.uniform(*self.speed)
            velocity = speed * np.array([np.sin(angle), np.cos(angle)])
            pos, vel = _bounce(start, velocity, self.num_frames, span)
            positions.append(pos)
            velocities.append(vel)
        positions_arr = np.stack(positions)
        source_arr = np.asarray(sources, dtype=np.int64)
        return Trajectory(
            positions=positions_arr,
            # Rounding a value in [0, span] with span an integer stays in [0, span].
            pixel_positions=np.rint(positions_arr).astype(np.int64),
            velocities=np.stack(velocities),
            source_indices=source_arr,
            labels=targets[source_arr],
        )

    def _digit_image(self, source_index: int) -> torch.Tensor:
        images, _ = _load_digits()
        image = torch.from_numpy(images[source_index])[None, None]  # (1, 1, 8, 8)
        resized = F.interpolate(
            image,
            size=(self.digit_size, self.digit_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return resized[0, 0].clamp_(0.0, 1.0)  # (digit_size, digit_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        traj = self.trajectory(index)
        s, d = self.size, self.digit_size
        video = torch.zeros(self.num_frames, 1, s, s)
        for digit in range(self.num_digits):
            image = self._digit_image(int(traj.source_indices[digit]))
            for frame, (y, x) in enumerate(traj.pixel_positions[digit]):
                box = video[frame, 0, y : y + d, x : x + d]
                torch.maximum(box, image, out=box)
        label = int(traj.labels[0]) if self.num_digits == 1 else -1
        return {"video": video.mul_(2.0).sub_(1.0), "label": label}
