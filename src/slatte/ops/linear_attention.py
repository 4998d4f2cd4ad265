"""Linear attention over all keys: SLA's linear branch on its own (the "linear only" baseline).

O = phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j) + eps), in O(N·D²) time and memory: the key
sums are formed once per head, never an N x N matrix. The feature maps and eps are SLA's
(`ops.sla.reference`), so this equals SLA's linear branch with every key block in S(i).
"""

from __future__ import annotations

import torch

from .sla.reference import LINEAR_EPS, feature_map


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    feature: str = "softmax",
    eps: float = LINEAR_EPS,
) -> torch.Tensor:
    """q: (B, H, Nq, D); k, v: (B, H, Nk, D) → (B, H, Nq, D) in q's dtype, computed in at least
    fp32 (the normaliser is a sum over all keys). `feature`: "softmax", "elu" or "relu"."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            "linear attention needs q (B, H, Nq, D) and k, v (B, H, Nk, D) of one batch, head "
            f"count and head dim, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    dtype = torch.promote_types(q.dtype, torch.float32)
    phi_q = feature_map(q.to(dtype), feature)
    phi_k = feature_map(k.to(dtype), feature)
    kv = phi_k.transpose(-1, -2) @ v.to(dtype)  # (B, H, D, D)
    key_sum = phi_k.sum(dim=-2, keepdim=True)  # (B, H, 1, D)
    den = (phi_q * key_sum).sum(dim=-1, keepdim=True) + eps
    return ((phi_q @ kv) / den).to(q.dtype)
