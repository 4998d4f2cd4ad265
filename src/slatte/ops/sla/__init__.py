"""SLA sparse-linear attention: reference, block map, kernel families, public op."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".config": ("SLAConfig",),
        ".interface": ("needs_gradient", "sla_block_map", "sparse_linear_attention"),
        ".launch_policy": ("LaunchPolicy",),
    },
)
