"""Dense softmax attention through PyTorch's SDPA: the baseline every other backend is held to."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention.

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); attn_mask: None, or a boolean tensor broadcastable to
    (B, H, Nq, Nk) where True means "may attend". Returns (B, H, Nq, D) in q's dtype.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
