"""slatte: fast video diffusion transformers (Latte-style DiT, SLA attention, STG guidance)."""

__version__ = "0.1.0"
