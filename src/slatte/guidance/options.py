"""The values guidance options take, checked without torch: the command line checks its flags
with these before anything imports torch, and the guidance configs check theirs with the same
functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# How an adaptive STG term's target ratio varies over the schedule (`adaptive.py`), as functions
# of the progress (B,) tensor.
SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "constant": lambda progress: progress.new_ones(progress.shape),
    # Strong while the layout forms, fading as details are drawn.
    "decay": lambda progress: 1.0 - progress,
    "rise": lambda progress: progress,
}
SCHEDULE_NAMES = tuple(SCHEDULES)


def check_schedule(name: str, schedule: str) -> None:
    """Raise a ValueError naming `name` unless `schedule` is one of `SCHEDULES`."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"{name} must be one of {SCHEDULE_NAMES}, got {schedule!r}")


def check_scale(name: str, scale: float) -> None:
    """Raise a ValueError naming `name` unless `scale` is a finite number >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number >= 0, got {scale!r}")
    if scale < 0:
        raise ValueError(f"{name} must be >= 0, got {scale}")


def check_ratio(name: str, ratio: float) -> None:
    """Raise a ValueError naming `name` unless `ratio` is a finite number > 0."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f"{name} must be a finite number > 0, got {ratio!r}")
    if ratio <= 0:
        raise ValueError(f"{name} must be > 0, got {ratio}")


def check_rescale(name: str, rescale: float) -> None:
    """Raise a ValueError naming `name` unless `rescale` is a number in [0, 1] (0 = off)."""
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1] (0 = off), got {rescale!r}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (0 = off), got {rescale}")


def check_blocks(name: str, blocks: int | Sequence[int]) -> tuple[int, ...]:
    """`blocks` as a tuple; a ValueError naming `name` unless they are distinct indices >= 0."""
    as_tuple = (blocks,) if isinstance(blocks, int) else blocks
    if (
        not isinstance(as_tuple, Sequence)
        or not as_tuple
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in as_tuple)
    ):
        raise ValueError(f"{name} must be one or more block indices >= 0, got {blocks!r}")
    if len(set(as_tuple)) != len(as_tuple):
        raise ValueError(f"{name} must not repeat a block index, got {blocks!r}")
    return tuple(as_tuple)


def check_window(name: str, start: float, stop: float) -> None:
    """Raise a ValueError naming `name` unless 0 <= start < stop <= 1."""
    for arg, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} {arg} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(
            f"{name} must satisfy 0 <= start < stop <= 1 (fractions of the schedule from the "
            f"noisy end), got start={start}, stop={stop}"
        )
