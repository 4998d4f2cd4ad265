"""slatte: fast video diffusion transformers (Latte-style DiT, SLA attention, STG guidance)."""

__version__ = "0.1.0"

_INTEGRATIONS = (
    "enable_sla",
    "disable_sla",
    "enable_stg",
    "disable_stg",
    "enable_fused_gelu",
    "disable_fused_gelu",
)


def __getattr__(name: str):
    # The diffusers integration is imported on first use: `import slatte` stays light.
    if name in _INTEGRATIONS:
        from . import integrations

        return getattr(integrations, name)
    raise AttributeError(f"module 'slatte' has no attribute {name!r}")
