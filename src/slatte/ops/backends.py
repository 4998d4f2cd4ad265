"""The names of the attention backends (the seam `ops.attention.attention` dispatches on), apart
from the backends themselves so that configs and the command line can check a name without
importing torch."""

BACKENDS = ("sdpa", "sla", "sla_reference", "linear")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
