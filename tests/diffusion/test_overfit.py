"""A tiny model overfits two fixed videos: the hybrid loss must fall well below its start."""

import math

import torch
from torch import nn

from slatte.diffusion import create_diffusion


class TinyVideoEps(nn.Module):
    """Per-frame convs with a sinusoidal timestep embedding; (B, F, C, H, W) -> (B, F, 2C, H, W)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = x.shape
        half = self.width // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))  # (B, width)
        emb = emb.repeat_interleave(f, dim=0)[:, :, None, None]  # (B*F, width, 1, 1)
        hidden = torch.nn.functional.silu(self.inp(x.reshape(b * f, c, h, w)) + emb)
        hidden = torch.nn.functional.silu(self.mid(hidden))
        return self.out(hidden).reshape(b, f, 2 * c, h, w)


def test_hybrid_loss_overfits_fixed_batch():
    torch.manual_seed(0)
    diffusion = create_diffusion(None, learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(2, 2, 2, 8, 8, generator=g) * 2 - 1).round(decimals=2)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([50, 600])
    model = TinyVideoEps(channels=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = diffusion.training_losses(model, x0, t, noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.5 * start, f"loss fell only from {start:.4f} to {end:.4f}"
