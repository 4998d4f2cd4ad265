"""Noise schedules, Gaussian diffusion (IDDPM with learned sigma), respacing, samplers, flow."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".flow": ("flow_euler_sample", "flow_matching_loss", "shift_sigmas"),
        ".gaussian": (
            "GaussianDiffusion",
            "PMeanVariance",
            "discretized_gaussian_log_likelihood",
            "mean_flat",
            "normal_kl",
        ),
        ".objectives": ("OBJECTIVES", "Objective", "make_objective"),
        ".respace": ("SpacedDiffusion", "create_diffusion", "space_timesteps"),
        ".samplers": ("SAMPLERS", "Sampler", "ddim_sample", "ddpm_sample"),
        ".schedules": ("linear_beta_schedule",),
    },
)
