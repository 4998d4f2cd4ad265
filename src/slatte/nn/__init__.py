"""Reusable modules."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".attention": ("Attention", "CrossAttention"),
        ".embeddings": (
            "LabelEmbedder",
            "PatchEmbed",
            "TimestepEmbedder",
            "sincos_1d",
            "sincos_2d",
        ),
        ".mlp": ("Mlp",),
        ".norm": ("FP32LayerNorm",),
        ".sla": ("SparseLinearAttention",),
    },
)
