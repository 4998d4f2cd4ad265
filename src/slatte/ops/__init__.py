"""Attention operators: functional, no module state."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".attention": ("attention",),
        ".backends": ("BACKENDS",),
        ".dense": ("dense_attention",),
        ".linear_attention": ("linear_attention",),
        ".sla": ("SLAConfig", "sla_block_map", "sparse_linear_attention"),
    },
)
