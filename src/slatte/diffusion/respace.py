"""Sampling on a subset of the training timesteps (IDDPM respacing).

A respaced diffusion keeps the cumulative products ᾱ at the chosen steps and derives new betas
between them, so q(x_t | x0) is unchanged at every kept step. The model was trained on the
original timesteps, so the respaced diffusion maps its indices back before calling it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from slatte.diffusion.gaussian import GaussianDiffusion
from slatte.diffusion.schedules import linear_beta_schedule


def _even_subset(start: int, size: int, count: int) -> list[int]:
    """``count`` indices spread evenly over [start, start + size), both ends included."""
    if count == 1:
        return [start]
    stride = (size - 1) / (count - 1)
    return [start + round(j * stride) for j in range(count)]


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Choose which of ``num_timesteps`` original steps to keep, sorted ascending.

    ``section_counts`` is one of:
      * an int or a digit string ("250"): that many steps spread evenly over [0, T);
      * a comma-separated string ("10,15,20") or a list of ints: the range is cut into that
        many equal sections and each section keeps its own count, evenly spread;
      * "ddimN": DDIM's striding, range(0, T, stride) for the stride that gives exactly N steps.
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            wanted = text[len("ddim") :]
            if not wanted.isdigit() or int(wanted) < 1:
                raise ValueError(f"bad DDIM respacing {section_counts!r}; expected e.g. 'ddim50'")
            n = int(wanted)
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == n:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot take exactly {n} evenly strided steps from {num_timesteps}; "
                f"use a 'ddimN' with N <= {num_timesteps} that some stride yields"
            )
        parts = text.split(",")
        if not text or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"bad timestep respacing {section_counts!r}; expected an int, a string like "
                "'250' or '10,15,20', or 'ddimN'"
            )
        counts = [int(p) for p in parts]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = list(section_counts)
        if not counts or not all(isinstance(c, int) for c in counts):
            raise ValueError(
                f"section counts must be a non-empty list of ints, got {section_counts!r}"
            )

    if len(counts) > num_timesteps:
        raise ValueError(f"{len(counts)} sections do not fit in {num_timesteps} timesteps")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(
                f"section {i} spans {size} timesteps, so it can keep 1..{size} steps, got {count}"
                f" (respacing {section_counts!r} of {num_timesteps} steps)"
            )
        kept.extend(_even_subset(start, size, count))
        start += size
    return kept


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` restricted to ``use_timesteps`` of a base schedule.

    Indices t into this diffusion run over 0..len(use_timesteps)-1; ``timestep_map[t]`` is the
    original timestep, which is what :meth:`wrap_model` passes to the model.
    """

    def __init__(
        self,
        base_betas: torch.Tensor | list[float],
        use_timesteps: Iterable[int],
        *,
        learn_sigma: bool = True,
        channel_axis: int = 2,
    ) -> None:
        base = GaussianDiffusion(base_betas, learn_sigma=learn_sigma, channel_axis=channel_axis)
        kept = sorted(set(int(s) for s in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= base.num_timesteps:
            raise ValueError(
                f"use_timesteps must be a non-empty subset of 0..{base.num_timesteps - 1}, "
                f"got {kept[:3]}...{kept[-3:]}"
            )
        self.original_num_timesteps = base.num_timesteps
        self.timestep_map = torch.tensor(kept, dtype=torch.long)
        # ᾱ at consecutive kept steps determines the beta between them.
        cumprod = base.alphas_cumprod[self.timestep_map]
        previous = torch.cat([cumprod.new_ones(1), cumprod[:-1]])
        super().__init__(
            1.0 - cumprod / previous, learn_sigma=learn_sigma, channel_axis=channel_axis
        )

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-scale timesteps (0..T-1) for respaced indices ``t``, on ``t``'s device."""
        return self.on_device("timestep_map", t.device)[t.long()]


def create_diffusion(
    timestep_respacing: str | int | Sequence[int] | None = None,
    *,
    learn_sigma: bool = True,
    num_timesteps: int = 1000,
    channel_axis: int = 2,
) -> SpacedDiffusion:
    """The DiT/Latte diffusion: linear betas over ``num_timesteps``, optionally respaced.

    ``timestep_respacing`` is anything :func:`space_timesteps` accepts ("250", "ddim50", 50,
    [10, 20]); None or "" keeps every step (use that for training).
    """
    betas = linear_beta_schedule(num_timesteps)
    if timestep_respacing is None or timestep_respacing == "":
        kept = list(range(num_timesteps))
    else:
        kept = space_timesteps(num_timesteps, timestep_respacing)
    return SpacedDiffusion(betas, kept, learn_sigma=learn_sigma, channel_axis=channel_axis)
