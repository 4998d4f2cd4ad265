"""Attention operators: functional, no module state."""

from .attention import BACKENDS, attention
from .dense import dense_attention
from .linear_attention import linear_attention
from .sla import SLAConfig, sla_block_map, sparse_linear_attention

__all__ = [
    "BACKENDS",
    "SLAConfig",
    "attention",
    "dense_attention",
    "linear_attention",
    "sla_block_map",
    "sparse_linear_attention",
]
