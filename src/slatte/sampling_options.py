"""What `slatte.sampling.generate` makes and how, as a validated value; apart from the sampling
code so that the command line reads the names (formats, samplers) without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .diffusion.sampler_names import SAMPLER_NAMES

if TYPE_CHECKING:
    from .guidance import STG

FORMATS = ("mp4", "gif", "png")


@dataclass(frozen=True)
class SampleOptions:
    """What to generate and how. `labels=None` cycles through the classes (0, 1, 2, …).

    `num_frames` (default: the model's) beyond the model's window makes a long video window by
    window (`diffusion.long_video`): each window conditioned on the last `overlap` frames of the
    previous one (default: a quarter of the window), `noise_reuse` re-noising them with the noise
    they were made from.
    """

    num_samples: int = 4
    labels: tuple[int, ...] | None = None
    steps: int = 50
    sampler: str = "ddpm"
    eta: float = 0.0
    cfg_scale: float = 1.0
    stg: tuple[STG, ...] = ()
    rescale: float = 0.0
    seed: int = 0
    batch_size: int = 8
    fps: int = 8
    formats: tuple[str, ...] = FORMATS
    progress: bool = True
    num_frames: int | None = None
    overlap: int | None = None
    noise_reuse: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.steps < 1 or self.steps > 1000:
            raise ValueError(f"steps must lie in [1, 1000], got {self.steps}")
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {self.sampler!r}")
        if not (math.isfinite(self.eta) and self.eta >= 0.0):
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.overlap is not None and self.overlap < 1:
            raise ValueError(f"overlap must be >= 1 frame, got {self.overlap}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}")
