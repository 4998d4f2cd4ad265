"""The attention seam: every attention layer calls `attention(...)` with a backend name."""

from __future__ import annotations

import torch

from .backends import check_backend
from .dense import dense_attention
from .linear_attention import linear_attention
from .sla.config import SLAConfig
from .sla.launch_policy import LaunchPolicy

# The SLA backends as launch policies of the SLA op: "sla" lets it choose its kernels (the
# fused ones where they apply), "sla_reference" forces the plain PyTorch reference.
SLA_POLICIES = {"sla": LaunchPolicy(), "sla_reference": LaunchPolicy(kernels="reference")}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "sdpa",
    sla: SLAConfig | None = None,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over (B, H, N, D) tensors through the named backend.

    "sdpa": dense softmax attention (any Nq, Nk; `attn_mask` allowed).
    "sla": SLA through the fused Triton kernel on CUDA, block-sparse PyTorch ops elsewhere.
    "sla_reference": SLA through the plain PyTorch reference (`SLA_POLICIES`).
    "linear": linear attention over all keys with `sla.feature_map` (SLA's linear branch alone;
    the "linear only" baseline). It ignores `proj_weight`, `proj_bias` and `scale`.
    The SLA backends are self-attention only (Nq == Nk) and use `sla` (defaults if None) with the
    layer's projection `proj_weight` (D, D) / `proj_bias` (D,). Neither SLA nor linear takes a mask.
    """
    check_backend(backend)
    if backend == "sdpa":
        return dense_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if attn_mask is not None:
        raise ValueError(
            f"attention backend {backend!r} takes no attn_mask; use backend='sdpa' for masked "
            "(e.g. text cross-) attention"
        )
    cfg = sla if sla is not None else SLAConfig()
    if backend == "linear":
        return linear_attention(q, k, v, feature=cfg.feature_map)
    from .sla import sparse_linear_attention

    return sparse_linear_attention(
        q, k, v, proj_weight, proj_bias, cfg, scale=scale, policy=SLA_POLICIES[backend]
    )
