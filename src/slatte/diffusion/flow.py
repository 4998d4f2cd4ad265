"""Rectified flow / flow matching with velocity prediction, as Wan2.1 trains and samples.

The path from data to noise is straight: x_σ = (1 - σ) x0 + σ ε for σ ∈ [0, 1], so its velocity
dx/dσ = ε - x0 is what the model learns. The model is called with t = 1000 σ, matching the
timestep range of the DDPM models it shares an architecture with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from slatte.diffusion.gaussian import ModelFn, mean_flat
from slatte.diffusion.samplers import (
    StepCallback,
    apply_step_callback,
    initial_noise,
    randn_cpu,
)

TIMESTEP_SCALE = 1000.0


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Move noise levels towards 1 (more time at high noise): shift·σ / (1 + (shift-1)·σ).

    Fixes 0 and 1; ``shift=1`` is the identity.
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def _check_output(velocity: torch.Tensor, x: torch.Tensor) -> None:
    if velocity.shape != x.shape:
        raise ValueError(
            f"flow model output must match its input shape {tuple(x.shape)} "
            f"(velocity, no learned sigma), got {tuple(velocity.shape)}"
        )


def flow_matching_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    target_fn: ModelFn | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample velocity-regression loss ``{"loss": (B,)}``.

    Args:
        model_fn: ``model_fn(x_σ, 1000·σ) -> velocity`` of x0's shape.
        x0: clean data (B, ...).
        t: noise levels σ ∈ (0, 1), shape (B,); uniform from ``generator`` if None.
        noise: ε of x0's shape; standard normal from ``generator`` if None.
        target_fn: the velocity to regress onto, ``target_fn(x_σ, 1000·σ)`` (a frozen teacher:
            distillation, run without gradients); None: the path's own velocity ε − x0.
    """
    batch = x0.shape[0]
    if t is None:
        t = torch.rand(batch, generator=generator, dtype=torch.float32).to(x0.device)
    elif t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    if noise is None:
        noise = randn_cpu(x0.shape, generator, x0.device, x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    sigma = t.to(x0.dtype).reshape(batch, *([1] * (x0.ndim - 1)))
    x_t = (1.0 - sigma) * x0 + sigma * noise
    velocity = model_fn(x_t, t * TIMESTEP_SCALE)
    _check_output(velocity, x0)
    dtype = torch.promote_types(x0.dtype, torch.float32)
    if target_fn is None:
        target = (noise - x0).to(dtype)
    else:
        with torch.no_grad():
            target = target_fn(x_t, t * TIMESTEP_SCALE)
        _check_output(target, x0)
        target = target.to(dtype)
    return {"loss": mean_flat((velocity.to(dtype) - target) ** 2)}


@torch.no_grad()
def flow_euler_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    steps: int,
    shift: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    step_callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate dx/dσ = v from σ = 1 (noise) to σ = 0 with ``steps`` Euler steps.

    The σ grid is uniform in [1, 0] and then shifted by :func:`shift_sigmas`. ``model_fn``
    receives t = 1000·σ as a float tensor (B,). ``step_callback(i, t, x)`` runs before each
    model call, with i counting down from steps-1, and may return a replacement x.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    sigmas = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    x = initial_noise(shape, noise, generator, device, dtype)
    indices = range(steps)
    for k in tqdm(indices, desc="Euler") if progress else indices:
        t = torch.full((x.shape[0],), float(sigmas[k]) * TIMESTEP_SCALE, device=x.device)
        x = apply_step_callback(step_callback, steps - 1 - k, t, x)
        velocity = model_fn(x, t)
        _check_output(velocity, x)
        x = x + float(sigmas[k + 1] - sigmas[k]) * velocity
    return x
