"""Noise schedules and the helper that reads per-timestep values out of them.

Schedules are kept in float64 on the CPU: products of 1000 factors close to one lose precision
in float32 (IDDPM keeps them in float64 for the same reason). Values are only cast to the
caller's dtype and device at the moment they are used.
"""

from __future__ import annotations

import torch


def linear_beta_schedule(num_timesteps: int = 1000) -> torch.Tensor:
    """The DDPM linear schedule, rescaled so any step count spans the same noise range.

    Returns float64 betas of shape (num_timesteps,) from 1e-4·1000/T to 0.02·1000/T.
    """
    # The last beta, 0.02·1000/T, must stay <= 1, which needs T >= 20.
    if not isinstance(num_timesteps, int) or num_timesteps < 20:
        raise ValueError(f"num_timesteps must be an int >= 20, got {num_timesteps!r}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast against ``like``.

    ``values`` is a 1-D float64 table, ``t`` an integer tensor (B,). The result has shape
    (B, 1, ..., 1) with ``like.ndim`` dimensions and ``like``'s dtype and device. Pass a table
    that is already on ``t``'s device (`GaussianDiffusion.coefficient` keeps one per device):
    copying a CPU table over makes the GPU stream wait for the host.
    """
    gathered = values.to(t.device)[t.detach().long()]
    gathered = gathered.to(device=like.device, dtype=like.dtype)
    return gathered.reshape(t.shape[0], *([1] * (like.ndim - 1)))
