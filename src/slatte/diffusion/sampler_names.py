"""The names of the samplers, apart from their functions (`samplers.SAMPLERS`) so that configs
and the command line check a name without importing torch."""

SAMPLER_NAMES = ("ddpm", "ddim")
