"""Samplers for :class:`GaussianDiffusion`: DDPM ancestral and DDIM.

Samplers see the network only as ``model_fn(x_t, t) -> model output`` (the guidance code wraps
the model into such a function), and call it with the timesteps the model was trained on: a
respaced diffusion maps its own indices back to the original 0..T-1 range.

All random numbers come from a CPU generator and are moved to the device afterwards, so a seed
gives the same samples on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from slatte.diffusion.gaussian import GaussianDiffusion, ModelFn
from slatte.diffusion.sampler_names import SAMPLER_NAMES

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def randn_cpu(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (from ``generator`` if given), then moved."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"the generator must live on the CPU so seeds reproduce across devices, "
            f"got one on {generator.device}"
        )
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def initial_noise(
    shape: Sequence[int],
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """x_T: the caller's ``noise`` (checked against ``shape``) or fresh noise on ``device``."""
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise
    return randn_cpu(shape, generator, device if device is not None else "cpu", dtype)


def _steps(num_steps: int, progress: bool, desc: str) -> range | tqdm:
    indices = range(num_steps - 1, -1, -1)
    return tqdm(indices, desc=desc, total=num_steps) if progress else indices


def apply_step_callback(
    step_callback: StepCallback | None, i: int, t: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Run ``step_callback(i, t, x)`` if given; its non-None result (same shape) replaces x."""
    if step_callback is None:
        return x
    replaced = step_callback(i, t, x)
    if replaced is None:
        return x
    if replaced.shape != x.shape:
        raise ValueError(
            f"step_callback returned shape {tuple(replaced.shape)}, expected {tuple(x.shape)}"
        )
    return replaced


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = False,
    progress: bool = False,
    step_callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 over every step of ``diffusion`` (respace it to go faster).

    Args:
        diffusion: the (usually respaced) diffusion whose steps are walked.
        model_fn: ``model_fn(x_t, t)`` with t the original-scale timesteps (B,).
        shape: sample shape, e.g. (B, F, C, H, W).
        noise: x_T; if None it is drawn from ``generator`` on ``device``.
        generator: CPU generator for x_T and every step's noise (global RNG if None).
        device, dtype: where and in what precision to sample when ``noise`` is None.
        clip_denoised: clamp the predicted x0 to [-1, 1] (pixel-space data).
        progress: show a tqdm bar.
        step_callback: ``step_callback(i, t, x_t)`` before each model call, with i the step
            index (counting down) and t the (B,) tensor of schedule indices; it may return a
            replacement x_t (e.g. known frames re-noised to level t) or None.

    Returns:
        The x0 samples, shape ``shape``.
    """
    model = diffusion.wrap_model(model_fn)
    x = initial_noise(shape, noise, generator, device, dtype)
    for i in _steps(diffusion.num_timesteps, progress, "DDPM"):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        x = apply_step_callback(step_callback, i, t, x)
        p = diffusion.p_mean_variance(model(x, t), x, t, clip_denoised=clip_denoised)
        # Drawn at every step, t = 0 included, so the noise stream depends only on the seed.
        z = randn_cpu(x.shape, generator, x.device, x.dtype)
        x = p.mean + (torch.exp(0.5 * p.log_variance) * z if i > 0 else 0.0)
    return x


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = False,
    progress: bool = False,
    step_callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM sampling over every step of ``diffusion`` (respace it, e.g. "ddim50").

    ``eta=0`` is deterministic; ``eta=1`` matches DDPM with the fixed posterior variance β̃.
    The learned variance, if any, is ignored. Other arguments as in :func:`ddpm_sample`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    model = diffusion.wrap_model(model_fn)
    x = initial_noise(shape, noise, generator, device, dtype)
    for i in _steps(diffusion.num_timesteps, progress, "DDIM"):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        x = apply_step_callback(step_callback, i, t, x)
        p = diffusion.p_mean_variance(model(x, t), x, t, clip_denoised=clip_denoised)
        # Re-derive ε from the (possibly clipped) x0 so the step stays on a consistent path.
        eps = diffusion.predict_eps_from_x0(x, t, p.pred_x0)
        alpha_bar = diffusion.coefficient("alphas_cumprod", t, x)
        alpha_bar_prev = diffusion.coefficient("alphas_cumprod_prev", t, x)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        x = (
            p.pred_x0 * torch.sqrt(alpha_bar_prev)
            + torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * eps
        )
        if eta > 0:
            z = randn_cpu(x.shape, generator, x.device, x.dtype)
            x = x + (sigma * z if i > 0 else 0.0)
    return x


@dataclass(frozen=True)
class Sampler:
    """A sampler by name: which of the training steps it walks for a given number of steps
    (a `space_timesteps` respacing) and the function that walks them, called as
    ``sample(diffusion, model_fn, shape, **options)`` with `eta` among the options only where
    `takes_eta` (the other options are those of :func:`ddpm_sample`)."""

    respacing: Callable[[int], str]
    sample: Callable[..., torch.Tensor]
    takes_eta: bool


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(respacing=str, sample=ddpm_sample, takes_eta=False),
    "ddim": Sampler(respacing=lambda steps: f"ddim{steps}", sample=ddim_sample, takes_eta=True),
}
# The command line offers SAMPLER_NAMES without importing torch; they must name these samplers.
if tuple(SAMPLERS) != SAMPLER_NAMES:
    raise ImportError(f"SAMPLER_NAMES {SAMPLER_NAMES} must name the samplers {tuple(SAMPLERS)}")
