"""Attention layers: multi-head self-attention through the backend seam, and masked
cross-attention to a conditioning sequence (always dense)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange
from torch import nn

from ..ops.attention import attention
from ..ops.backends import check_backend
from ..ops.dense import dense_attention
from ..ops.sequence_parallel import ulysses_attention
from ..ops.sla.config import SLAConfig
from .norm import FP32LayerNorm
from .sla import SparseLinearAttention


class Attention(nn.Module):
    """Self-attention over (B, N, D) tokens: fused qkv, optional per-head qk LayerNorm, an output
    projection `proj`, and the attention op chosen by `backend` (one of `ops.attention.BACKENDS`).

    With an SLA backend the layer holds a `SparseLinearAttention` submodule named `sla` (which
    owns the zero-initialised `proj_l`); with "sdpa" or "linear" it holds none ("linear" reads
    its feature map from the SLA options).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        backend: str = "sdpa",
        sla: SLAConfig | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.backend = "sdpa"
        self.sla: SparseLinearAttention | None = None
        self.sla_config = SLAConfig()
        self.set_backend(backend, sla)

    def set_backend(self, backend: str, sla: SLAConfig | None = None) -> None:
        """Switch the attention op. Entering an SLA backend adds a zero `sla.proj_l` (or keeps
        the trained one when already on SLA with the same kind of projection); "sdpa" and
        "linear" drop it. `sla` replaces the SLA options (else the layer's are kept)."""
        check_backend(backend)
        self.sla_config = sla if sla is not None else self.sla_config
        if backend in ("sdpa", "linear"):
            self.sla = None
        else:
            previous = self.sla
            device = self.qkv.weight.device
            self.sla = SparseLinearAttention(self.head_dim, self.sla_config, backend=backend)
            self.sla.to(device)
            if previous is not None and previous.config.projection == self.sla_config.projection:
                self.sla.proj_l.load_state_dict(previous.proj_l.state_dict())
        self.backend = backend

    def forward(
        self, x: torch.Tensor, *, sequence_group: dist.ProcessGroup | None = None
    ) -> torch.Tensor:
        """x: (B, N, D) → (B, N, D).

        `sequence_group`: x holds this process's chunk of a sequence split over the group
        (chunks in rank order); attention then runs over the whole sequence through Ulysses
        all-to-alls (`ops.sequence_parallel`), which needs num_heads divisible by the group size.
        """
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        out = ulysses_attention(q, k, v, self._attend, sequence_group)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def identity_map(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) → the layer's output under the identity attention map, `proj(V)` (STG's
        `attention_values`); q and k are not computed. Token by token, so any leading dims."""
        dim = x.shape[-1]
        v = nn.functional.linear(
            x,
            self.qkv.weight[2 * dim :],
            None if self.qkv.bias is None else self.qkv.bias[2 * dim :],
        )  # the value rows of the fused projection
        return self.proj(v)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.sla is not None:
            return self.sla(q, k, v)
        return attention(q, k, v, backend=self.backend, sla=self.sla_config)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, backend={self.backend!r}"


class CrossAttention(nn.Module):
    """Queries (B, N, D) attend to a context (B, L, Dc) with a padding mask (B, L), True = real
    token. Dense softmax attention; a row whose mask is all False gets exactly zero output
    (rather than the NaN softmax would give), so "no text" is a valid input."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, *, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.q_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        kv = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        k, v = kv.unbind(0)  # each (B, H, L, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None
        has_tokens = None
        if mask is not None:
            has_tokens = mask.any(dim=1)  # (B,)
            # Let empty rows attend everywhere (finite softmax), then zero their output below.
            mask = mask | ~has_tokens[:, None]
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads and queries
        out = dense_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(rearrange(out, "b h n d -> b n (h d)"))
        if has_tokens is not None:
            out = out * has_tokens[:, None, None].to(out.dtype)
        return out


__all__ = ["Attention", "CrossAttention"]
