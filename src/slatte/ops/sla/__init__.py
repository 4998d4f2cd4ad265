"""SLA sparse-linear attention: reference, block map, kernel families, public op."""

from .config import SLAConfig
from .interface import sla_block_map, sparse_linear_attention
from .launch_policy import LaunchPolicy

__all__ = ["LaunchPolicy", "SLAConfig", "sla_block_map", "sparse_linear_attention"]
