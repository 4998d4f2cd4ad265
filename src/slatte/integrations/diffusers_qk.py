"""How each supported diffusers transformer normalises and rotates q and k in its self-attention:
the per-model functions `ModelSpec.qk` names (`diffusers_common.SUPPORTED`).

Each takes the attention module, q and k as projected (B, N, H·D), and the rotary embedding the
model passes to its attention processor (None without one), and returns q, k as (B, N, H, D).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ops.rms_norm_rotary import rms_norm_rotary_qk, rotate_pairs


def _normed(attn: nn.Module, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    return q, k


def _heads(attn: nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.unflatten(2, (attn.heads, -1)) for t in tensors)  # (B, N, H, D) views


def no_rotary_qk(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention's qk norms, if any (Latte: none, and no rotary embedding)."""
    return _heads(attn, *_normed(attn, q, k))


def ltx_qk(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """LTX-Video: qk norms over H·D, then the model's own rotary function on (B, N, H·D)."""
    q, k = _normed(attn, q, k)
    if rotary is not None:
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        q, k = apply_rotary_emb(q, rotary), apply_rotary_emb(k, rotary)
    return _heads(attn, q, k)


def ltx2_qk(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """LTX-2: qk RMS norms over H·D, then the model's own rotation of (B, N, H·D) by its (cos,
    sin) tables, interleaved pairs or split halves as the attention's `rope_type` says."""
    q, k = _normed(attn, q, k)
    if rotary is not None:
        from diffusers.models.transformers import transformer_ltx2

        rotate = {
            "interleaved": transformer_ltx2.apply_interleaved_rotary_emb,
            "split": transformer_ltx2.apply_split_rotary_emb,
        }.get(attn.rope_type)
        if rotate is None:
            raise ValueError(
                f"LTX-2 attention with rope_type={attn.rope_type!r}; slatte knows "
                "'interleaved' and 'split'"
            )
        q, k = rotate(q, rotary), rotate(k, rotary)
    return _heads(attn, q, k)


def wan_qk(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan2.1: qk RMS norms over H·D, then rotation of interleaved pairs by (cos, sin) tables
    (1, N, 1, D); fused into one kernel where `_fused_wan_qk` applies."""
    fused = _fused_wan_qk(attn, q, k, rotary)
    if fused is not None:
        return fused
    q, k = _heads(attn, *_normed(attn, q, k))
    if rotary is None:
        return q, k
    if not (isinstance(rotary, tuple) and len(rotary) == 2):
        raise ValueError(
            f"Wan's rotary embedding arrived as {type(rotary).__name__}; slatte expects the "
            "(cos, sin) pair that diffusers >= 0.36 passes"
        )
    return rotate_pairs(q, *rotary), rotate_pairs(k, *rotary)


def _fused_wan_qk(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Wan's qk RMS norms and rotation as one kernel (`ops.rms_norm_rotary`, the same steps up
    to bf16 rounding) where it applies: inference (no gradients), the modules Wan builds
    (`torch.nn.RMSNorm` over H·D with weights of q's dtype, one eps), fp32 (cos, sin) tables.
    None otherwise, and the modules run."""
    norms = (getattr(attn, "norm_q", None), getattr(attn, "norm_k", None))
    if not all(isinstance(m, nn.RMSNorm) and m.weight is not None for m in norms):
        return None
    norm_q, norm_k = norms
    if norm_q.eps is None or norm_q.eps != norm_k.eps:
        return None
    if not (isinstance(rotary, tuple) and len(rotary) == 2):
        return None  # wan_qk's own path says what is wrong
    cos, sin = rotary
    heads, (_, n, c) = attn.heads, q.shape
    table_shape = (1, n, 1, c // heads)
    if (
        c % heads
        or k.shape != q.shape
        or any(t.shape != table_shape or t.dtype != torch.float32 for t in (cos, sin))
        or any(m.weight.dtype != q.dtype or m.weight.shape != (c,) for m in norms)
    ):
        return None
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, norm_q.weight, norm_k.weight)
    ):
        return None  # the fused op has no backward
    return rms_norm_rotary_qk(q, k, norm_q.weight, norm_k.weight, cos, sin, heads, norm_q.eps)
