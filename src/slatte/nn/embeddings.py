"""Input embeddings: patches, timesteps, class labels, and fixed sin-cos position tables.

The sin-cos tables follow the MAE / DiT / Latte convention exactly (first half of the channels
encodes the column, second half the row; each half is [sin, cos]), so weights converted from
those models see the positions they were trained with.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

# ---------------------------------------------------------------------------------------------
# Fixed sin-cos tables
# ---------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions → (N, dim) table `[sin(pos·ω), cos(pos·ω)]`, ω_i = 10000^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h·grid_w, dim) table for a row-major patch grid (column index varies fastest)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )  # each (grid_h, grid_w)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


# ---------------------------------------------------------------------------------------------
# Learned embedders
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Frames (N, C, H, W) → patch tokens (N, S, D), S = (H/p)·(W/p), row-major.

    A linear map of each flattened p×p×C patch (feature order (p, q, c)); equivalent to the
    usual stride-p convolution with weight `conv.weight.permute(0, 2, 3, 1).reshape(D, -1)`.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        patches = rearrange(x, "n c (h p) (w q) -> n (h w) (p q c)", p=p, q=p)
        return self.proj(patches)


class TimestepEmbedder(nn.Module):
    """Timesteps (B,) → (B, D): sinusoidal features → Linear → SiLU → Linear, all in fp32.

    Diffusion timesteps run to 1000; a bf16 sinusoid of that argument is mostly noise, so the
    whole embedding is computed in fp32 (autocast off, weights upcast) and returned in fp32.
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) → (B, frequency_size) `[cos(t·f), sin(t·f)]` (DiT's order)."""
        half = self.frequency_size // 2
        freqs = torch.exp(
            -math.log(self.max_period)
            * torch.arange(half, dtype=torch.float32, device=t.device)
            / half
        )
        args = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=t.device.type, enabled=False):
            h = self.sinusoid(t)
            lin1, act, lin2 = self.mlp
            h = nn.functional.linear(h, lin1.weight.float(), lin1.bias.float())
            h = nn.functional.linear(act(h), lin2.weight.float(), lin2.bias.float())
        return h


class LabelEmbedder(nn.Module):
    """Class labels (B,) → (B, D), with a learned null class (index `num_classes`).

    In training mode each label is replaced by the null class with probability `dropout_prob`
    (classifier-free guidance training); in eval mode labels pass through unchanged.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(y.shape, device=y.device) < self.dropout_prob
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            y = self.drop_labels(y)
        return self.embedding_table(y)
