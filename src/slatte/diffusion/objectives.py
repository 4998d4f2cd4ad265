"""Training objectives, chosen by name: what a model learns from a batch of clean data.

An objective draws each sample's noise level from a generator the trainer seeds per sample (so
a run resumes exactly), and turns ``model_fn`` and the clean batch into per-sample losses:
- ``"gaussian"``: the DDPM ε-loss (IDDPM's hybrid loss with a learned variance), 1000 steps;
- ``"flow"``: flow matching, the velocity ε − x0 of the straight path (Wan2.1's training);
- ``"distill"``: the flow-matching path with a frozen teacher's velocity as the target (e.g.
  the same weights with dense attention, to fine-tune sparse attention towards them).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from slatte.diffusion.flow import flow_matching_loss, shift_sigmas
from slatte.diffusion.gaussian import ModelFn
from slatte.diffusion.respace import create_diffusion


class Objective(Protocol):
    #: Whether `losses` needs a `teacher_fn` (the trainer builds one only then).
    needs_teacher: ClassVar[bool]

    def draw_t(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's noise level, shape (1,), drawn from `generator` (on the CPU)."""
        ...

    def losses(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        *,
        teacher_fn: ModelFn | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses, each (B,), with at least ``"loss"`` (the one to minimise)."""
        ...


class GaussianObjective:
    """DDPM's ε-prediction loss on a linear 1000-step schedule, with IDDPM's variational bound
    when the model learns its variance, optionally Min-SNR-γ weighted."""

    needs_teacher: ClassVar[bool] = False

    def __init__(self, *, learn_sigma: bool = False, min_snr_gamma: float | None = None):
        self.diffusion = create_diffusion(learn_sigma=learn_sigma)
        self.min_snr_gamma = min_snr_gamma

    def draw_t(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.diffusion.num_timesteps, (1,), generator=generator)

    def losses(self, model_fn, x0, t, noise, *, teacher_fn=None) -> dict[str, torch.Tensor]:
        return self.diffusion.training_losses(
            model_fn, x0, t, noise=noise, min_snr_gamma=self.min_snr_gamma
        )


class FlowObjective:
    """Flow matching: σ uniform in [0, 1) moved towards 1 by `shift` (Wan2.1 uses 3 to 5)."""

    needs_teacher: ClassVar[bool] = False

    def __init__(self, *, shift: float = 1.0):
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        self.shift = shift

    def draw_t(self, generator: torch.Generator) -> torch.Tensor:
        return shift_sigmas(torch.rand(1, generator=generator), self.shift)

    def losses(self, model_fn, x0, t, noise, *, teacher_fn=None) -> dict[str, torch.Tensor]:
        return flow_matching_loss(model_fn, x0, t, noise)


class DistillObjective(FlowObjective):
    """The flow-matching path and noise levels, with a frozen teacher's velocity as target."""

    needs_teacher: ClassVar[bool] = True

    def losses(self, model_fn, x0, t, noise, *, teacher_fn=None) -> dict[str, torch.Tensor]:
        if teacher_fn is None:
            raise ValueError("the 'distill' objective needs a teacher_fn, got None")
        return flow_matching_loss(model_fn, x0, t, noise, target_fn=teacher_fn)


OBJECTIVES: dict[str, type] = {
    "gaussian": GaussianObjective,
    "flow": FlowObjective,
    "distill": DistillObjective,
}


def make_objective(name: str, **options: Any) -> Objective:
    """The objective called `name` (a key of `OBJECTIVES`), built with its keyword options."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](**options)


__all__ = [
    "OBJECTIVES",
    "DistillObjective",
    "FlowObjective",
    "GaussianObjective",
    "Objective",
    "make_objective",
]
