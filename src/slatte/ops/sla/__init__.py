"""SLA sparse-linear attention: reference, block map, fused Triton kernels, public op."""

from .config import SLAConfig
from .interface import sla_block_map, sparse_linear_attention

__all__ = ["SLAConfig", "sla_block_map", "sparse_linear_attention"]
