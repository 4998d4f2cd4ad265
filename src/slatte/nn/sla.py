"""The SLA attention module: owns the learnable projection of the linear branch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..ops.attention import SLA_POLICIES, attention
from ..ops.sla.config import SLAConfig


class SparseLinearAttention(nn.Module):
    """SLA over (B, H, N, D) q, k, v with a zero-initialised fp32 `Linear(D, D)` projection.

    The projection is named `proj_l`, as in the official SLA code, so that its fine-tuned
    `proj_l.weight` / `proj_l.bias` load directly. A zero projection makes a fresh module
    compute sparse-only attention, so a dense model switched to SLA starts close to where it was.
    With `config.projection == "identity"` the projection is the identity and is not trained.
    `backend`: "sla" (fused kernel on CUDA, block-sparse PyTorch elsewhere) or "sla_reference" (the
    attention seam's names, `ops.attention.SLA_POLICIES`).
    """

    def __init__(self, head_dim: int, config: SLAConfig | None = None, *, backend: str = "sla"):
        super().__init__()
        if backend not in SLA_POLICIES:
            raise ValueError(f"backend must be one of {tuple(SLA_POLICIES)}, got {backend!r}")
        self.head_dim = head_dim
        self.config = config if config is not None else SLAConfig()
        self.backend = backend
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        nn.init.zeros_(self.proj_l.bias)
        if self.config.projection == "identity":
            with torch.no_grad():
                self.proj_l.weight.copy_(torch.eye(head_dim))
            self.proj_l.requires_grad_(False)
        else:
            nn.init.zeros_(self.proj_l.weight)

    def _apply(self, fn, recurse=True):
        # The projection stays fp32 when the model is cast to bf16/fp16 (the spec keeps it fp32).
        super()._apply(fn, recurse)
        if self.proj_l.weight.dtype != torch.float32:
            self.proj_l.float()
        return self

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
    ) -> torch.Tensor:
        return attention(
            q,
            k,
            v,
            backend=self.backend,
            sla=self.config,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            scale=scale,
        )

    @torch.no_grad()
    def load_official_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
    ) -> None:
        """Load `proj_l.weight` / `proj_l.bias` fine-tuned with the official SLA code.

        `state_dict` may be a whole model's: `prefix` selects this layer's keys (for example
        "blocks.3.self_attn.attn_op."). Any other key is ignored; the values are cast to fp32.
        Checkpoints of the official `main` branch / TurboDiffusion were trained with the linear
        branch over all blocks: use `SLAConfig(linear_scope="all")` with them.
        """
        if self.config.projection != "learned":
            raise ValueError(
                f"this layer's projection is fixed ({self.config.projection!r}); loading a "
                "fine-tuned projection needs SLAConfig(projection='learned')"
            )
        for name in ("weight", "bias"):
            key = f"{prefix}proj_l.{name}"
            if key not in state_dict:
                raise ValueError(f"state dict has no {key!r} (prefix={prefix!r})")
            value = state_dict[key]
            target = getattr(self.proj_l, name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}, this layer (head_dim={self.head_dim}) "
                    f"needs {tuple(target.shape)}"
                )
            target.copy_(value.to(device=target.device, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, backend={self.backend!r}, {self.config}"
