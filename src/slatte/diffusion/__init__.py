"""Noise schedules, Gaussian diffusion (IDDPM with learned sigma), respacing, samplers, flow."""

from slatte.diffusion.flow import flow_euler_sample, flow_matching_loss, shift_sigmas
from slatte.diffusion.gaussian import (
    GaussianDiffusion,
    PMeanVariance,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from slatte.diffusion.objectives import OBJECTIVES, Objective, make_objective
from slatte.diffusion.respace import SpacedDiffusion, create_diffusion, space_timesteps
from slatte.diffusion.samplers import SAMPLERS, Sampler, ddim_sample, ddpm_sample
from slatte.diffusion.schedules import linear_beta_schedule

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "Objective",
    "Sampler",
    "GaussianDiffusion",
    "PMeanVariance",
    "SpacedDiffusion",
    "create_diffusion",
    "ddim_sample",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "flow_euler_sample",
    "flow_matching_loss",
    "linear_beta_schedule",
    "make_objective",
    "mean_flat",
    "normal_kl",
    "shift_sigmas",
    "space_timesteps",
]
