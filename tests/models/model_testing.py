"""Shared helpers of the model tests: tiny configs, random inputs, randomised weights."""

from __future__ import annotations

import torch

from slatte.models import VideoDiT, VideoDiTConfig

TINY = dict(
    input_size=8,
    num_frames=3,
    in_channels=2,
    hidden_size=32,
    depth=2,
    num_heads=2,
    num_classes=5,
)


# The PixArt-α options diffusers' LatteTransformer3DModel needs (all non-default).
PIXART = dict(
    cross_attn_norm=False,
    block_modulation="table",
    final_modulation="table",
    single_frame_temporal_embed=False,
)


def tiny_config(**overrides) -> VideoDiTConfig:
    return VideoDiTConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, randomize: bool = True, **overrides) -> VideoDiT:
    """A tiny model; `randomize` also fills the zero-initialised layers (adaLN, final layer,
    cross-attention output, SLA projections) so that every path changes the output."""
    torch.manual_seed(seed)
    model = VideoDiT(tiny_config(**overrides))
    if randomize:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def tiny_inputs(config: VideoDiTConfig, batch: int = 2, seed: int = 0, text_len: int = 5):
    """x, t, y and (for text models) text, text_mask; every row different."""
    gen = torch.Generator().manual_seed(seed)
    c, s = config.in_channels, config.input_size
    x = torch.randn(batch, config.num_frames, c, s, s, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, max(config.num_classes, 1), (batch,), generator=gen)
    kwargs = {}
    if config.text_dim is not None:
        kwargs["text"] = torch.randn(batch, text_len, config.text_dim, generator=gen)
        mask = torch.ones(batch, text_len, dtype=torch.bool)
        mask[0, text_len // 2 :] = False  # a padded row
        kwargs["text_mask"] = mask
    return x, t, (y if config.num_classes else None), kwargs
