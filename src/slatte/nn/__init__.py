"""Reusable modules."""

from .attention import Attention, CrossAttention
from .embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_1d, sincos_2d
from .mlp import Mlp
from .norm import FP32LayerNorm
from .sla import SparseLinearAttention

__all__ = [
    "Attention",
    "CrossAttention",
    "FP32LayerNorm",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "SparseLinearAttention",
    "TimestepEmbedder",
    "sincos_1d",
    "sincos_2d",
]
