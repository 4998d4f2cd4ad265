"""Latte checkpoints → slatte's `VideoDiT`.

Official Latte (github.com/Vchitect/Latte, `models/latte.py`, class-conditional, `extras=2`)
is DiT-shaped like slatte's VideoDiT, so the conversion is a renaming plus one reshape:

| official key | slatte key |
| --- | --- |
| `x_embedder.proj.weight` (D, C, p, p) conv | `x_embedder.proj.weight` (D, p·p·C) linear, (p, q, c) order |
| `t_embedder.mlp.{0,2}.*` | same |
| `y_embedder.embedding_table.weight` (classes + 1, D) | same (last row: the null class) |
| `blocks.{i}.attn.qkv.*`, `blocks.{i}.attn.proj.*` | same |
| `blocks.{i}.mlp.fc{1,2}.*` | same |
| `blocks.{i}.adaLN_modulation.1.*` | same |
| `final_layer.{linear,adaLN_modulation.1}.*` | same |
| `pos_embed` (1, S, D), `temp_embed` (1, F, D) fixed sin-cos | recomputed; checked equal |

Even blocks are spatial, odd temporal (official and slatte alike). The number of heads is not
stored in the weights: it is taken from the Latte size with that hidden width (S 6, B 12,
L/XL 16) unless given.

diffusers' `LatteTransformer3DModel` (text-to-video, PixArt-α style, `norm_type="ada_norm_single"`)
maps onto a text-conditioned VideoDiT with `convert_diffusers_latte`: spatial block j → block
2j, temporal block j → block 2j + 1; the shared `adaln_single.linear` plus each block's
`scale_shift_table` fold into that block's `adaLN_modulation` (same weight, bias + table);
`caption_projection` → `text_embedder`. Two parts of that architecture have no VideoDiTConfig
option yet, so the converter swaps them in as modules (see `convert_diffusers_latte`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..models import VideoDiT, VideoDiTConfig

# Latte's sizes: hidden width → heads (Latte-S/B/L/XL).
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
_RENAMED_KEYS = ("t_embedder.", "y_embedder.", "blocks.", "final_layer.")


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of an official Latte `.pt` checkpoint: its "ema" entry if present, else
    "model", else the file itself; a DDP "module." prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Latte checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    for entry in ("ema", "model", "state_dict"):
        if isinstance(checkpoint.get(entry), dict):
            checkpoint = checkpoint[entry]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(
            f"not an official Latte state dict: key {key!r} is missing "
            f"({len(state)} keys, e.g. {sorted(state)[:4]})"
        )
    return state[key]


def official_config(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None
) -> VideoDiTConfig:
    """The VideoDiTConfig of an official class-conditional Latte state dict."""
    conv = _require(state, "x_embedder.proj.weight")  # (D, C, p, p)
    if conv.dim() != 4 or conv.shape[2] != conv.shape[3]:
        raise ValueError(f"x_embedder.proj.weight must be (D, C, p, p), got {tuple(conv.shape)}")
    hidden, in_channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    if "y_embedder.embedding_table.weight" not in state:
        raise ValueError(
            "this Latte checkpoint has no y_embedder (not class-conditional, extras != 2); "
            "slatte converts the class-conditional official models"
        )
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    patches = _require(state, "pos_embed").shape[1]
    grid = round(patches**0.5)
    if grid * grid != patches:
        raise ValueError(f"pos_embed has {patches} positions, not a square grid")
    out = _require(state, "final_layer.linear.weight").shape[0] // (patch * patch)
    if num_heads is None:
        if hidden not in _HEADS_BY_WIDTH:
            raise ValueError(
                f"cannot infer the number of heads for hidden size {hidden} (known Latte widths: "
                f"{sorted(_HEADS_BY_WIDTH)}); pass num_heads"
            )
        num_heads = _HEADS_BY_WIDTH[hidden]
    return VideoDiTConfig(
        input_size=grid * patch,
        num_frames=_require(state, "temp_embed").shape[1],
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch,
        mlp_ratio=_require(state, "blocks.0.mlp.fc1.weight").shape[0] / hidden,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        learn_sigma=out == 2 * in_channels,
        block_pattern="alternating",
    )


def convert_official_latte(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None
) -> VideoDiT:
    """An official class-conditional Latte state dict → slatte VideoDiT (fp32, eval mode)."""
    config = official_config(state, num_heads=num_heads)
    model = VideoDiT(config)
    conv = state["x_embedder.proj.weight"]
    weights = {
        # The stride-p convolution as a linear map of (p, q, c)-ordered patch features.
        "x_embedder.proj.weight": conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1),
        "x_embedder.proj.bias": _require(state, "x_embedder.proj.bias"),
    }
    weights.update({k: v for k, v in state.items() if k.startswith(_RENAMED_KEYS)})
    expected = set(model.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise ValueError(
            f"official Latte keys do not match a {config.depth}-block VideoDiT: missing "
            f"{sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}"
        )
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    # The fixed tables are recomputed by slatte, so they must be the ones Latte trained with.
    for name, ours in (("pos_embed", model.pos_embed), ("temp_embed", model.temp_embed)):
        theirs = state[name].reshape(ours.shape).float()
        if not torch.allclose(theirs, ours, atol=1e-5):
            raise ValueError(
                f"{name} of the checkpoint differs from slatte's sin-cos table (max difference "
                f"{(theirs - ours).abs().max():.3g}); the checkpoint uses another position scheme"
            )
    return model.eval()


# ---------------------------------------------------------------------------------------------
# diffusers LatteTransformer3DModel
# ---------------------------------------------------------------------------------------------


class TableModulation(nn.Module):
    """PixArt-style final modulation: (shift, scale) = table (2, D) + c, with no SiLU / linear
    (diffusers Latte's final layer), as a drop-in for `FinalLayer.adaLN_modulation`."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone().float())  # (2, D)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        # c (B, D) → (B, 2D) laid out as FinalLayer expects: [shift | scale].
        return (self.table[None] + c[:, None]).flatten(1).to(c.dtype)


def _diffusers_latte_config(transformer: nn.Module) -> VideoDiTConfig:
    cfg = transformer.config
    name = type(transformer).__name__
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    problems = []
    if cfg.norm_type != "ada_norm_single":
        problems.append(f"norm_type={cfg.norm_type!r} (needs 'ada_norm_single')")
    if cfg.norm_elementwise_affine:
        problems.append("norm_elementwise_affine=True (needs False)")
    if cfg.norm_eps != 1e-6:
        problems.append(f"norm_eps={cfg.norm_eps} (needs 1e-6)")
    if cfg.activation_fn != "gelu-approximate":
        problems.append(f"activation_fn={cfg.activation_fn!r} (needs 'gelu-approximate')")
    if cfg.cross_attention_dim != hidden:
        problems.append(f"cross_attention_dim={cfg.cross_attention_dim} (needs {hidden})")
    if cfg.sample_size >= 128:
        problems.append(f"sample_size={cfg.sample_size} (interpolated positions; needs < 128)")
    if not cfg.attention_bias or cfg.caption_channels is None:
        problems.append("attention_bias=False or no caption_channels")
    if problems:
        raise ValueError(f"cannot convert this {name} to a VideoDiT: " + "; ".join(problems))
    mlp_hidden = transformer.transformer_blocks[0].ff.net[0].proj.out_features
    return VideoDiTConfig(
        input_size=cfg.sample_size,
        num_frames=cfg.video_length,
        in_channels=cfg.in_channels,
        hidden_size=hidden,
        depth=2 * cfg.num_layers,
        num_heads=cfg.num_attention_heads,
        patch_size=cfg.patch_size,
        mlp_ratio=mlp_hidden / hidden,
        num_classes=0,
        learn_sigma=transformer.out_channels == 2 * cfg.in_channels,
        block_pattern="alternating",
        text_dim=cfg.caption_channels,
    )


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, prefix: str) -> dict:
    out = {f"{prefix}.weight": weight}
    if bias is not None:
        out[f"{prefix}.bias"] = bias
    return out


def _attention(attn: nn.Module, prefix: str) -> dict:
    return {
        **_linear(
            torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]),
            torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias]),
            f"{prefix}.qkv",
        ),
        **_linear(attn.to_out[0].weight, attn.to_out[0].bias, f"{prefix}.proj"),
    }


@torch.no_grad()
def convert_diffusers_latte(transformer: nn.Module) -> VideoDiT:
    """diffusers `LatteTransformer3DModel` → text-conditioned slatte VideoDiT (fp32, eval).

    Inputs differ only in layout: diffusers takes (B, C, F, H, W), VideoDiT (B, F, C, H, W);
    `encoder_hidden_states` / `encoder_attention_mask` are VideoDiT's `text` / `text_mask`.
    Until VideoDiTConfig has options for them, two modules are swapped in: the cross-attention
    reads the un-normalised hidden states (`norm_cross` is an Identity), and the final layer's
    modulation is `TableModulation`. So the result runs and trains, but `save_model` refuses it.
    Single-frame inputs differ from diffusers: Latte skips the temporal embedding for one frame.
    """
    name = type(transformer).__name__
    if name != "LatteTransformer3DModel":
        raise ValueError(f"convert_diffusers_latte needs a LatteTransformer3DModel, got {name}")
    config = _diffusers_latte_config(transformer)
    model = VideoDiT(config)
    conv = transformer.pos_embed.proj.weight  # (D, C, p, p)
    adaln = transformer.adaln_single
    timestep = adaln.emb.timestep_embedder
    weights = {
        "x_embedder.proj.weight": conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1),
        "x_embedder.proj.bias": transformer.pos_embed.proj.bias,
        **_linear(timestep.linear_1.weight, timestep.linear_1.bias, "t_embedder.mlp.0"),
        **_linear(timestep.linear_2.weight, timestep.linear_2.bias, "t_embedder.mlp.2"),
        **_linear(
            transformer.caption_projection.linear_1.weight,
            transformer.caption_projection.linear_1.bias,
            "text_embedder.fc1",
        ),
        **_linear(
            transformer.caption_projection.linear_2.weight,
            transformer.caption_projection.linear_2.bias,
            "text_embedder.fc2",
        ),
        **_linear(transformer.proj_out.weight, transformer.proj_out.bias, "final_layer.linear"),
    }
    pairs = zip(
        transformer.transformer_blocks, transformer.temporal_transformer_blocks, strict=True
    )
    sources = [blk for pair in pairs for blk in pair]  # execution order: spatial, temporal, ...
    for i, src in enumerate(sources):
        prefix = f"blocks.{i}"
        weights.update(_attention(src.attn1, f"{prefix}.attn"))
        # Shared modulation linear, plus this block's (6, D) table folded into the bias.
        weights[f"{prefix}.adaLN_modulation.1.weight"] = adaln.linear.weight
        weights[f"{prefix}.adaLN_modulation.1.bias"] = (
            adaln.linear.bias + src.scale_shift_table.flatten()
        )
        weights.update(
            _linear(src.ff.net[0].proj.weight, src.ff.net[0].proj.bias, f"{prefix}.mlp.fc1")
        )
        weights.update(_linear(src.ff.net[2].weight, src.ff.net[2].bias, f"{prefix}.mlp.fc2"))
        if src.attn2 is not None:
            cross = src.attn2
            weights.update(_linear(cross.to_q.weight, cross.to_q.bias, f"{prefix}.cross_attn.q"))
            weights.update(
                _linear(
                    torch.cat([cross.to_k.weight, cross.to_v.weight]),
                    torch.cat([cross.to_k.bias, cross.to_v.bias]),
                    f"{prefix}.cross_attn.kv",
                )
            )
            weights.update(
                _linear(cross.to_out[0].weight, cross.to_out[0].bias, f"{prefix}.cross_attn.proj")
            )
            model.blocks[i].norm_cross = nn.Identity()
    model.final_layer.adaLN_modulation = TableModulation(transformer.scale_shift_table)
    model.load_state_dict(
        {k: v.float() for k, v in weights.items()}
        | {"final_layer.adaLN_modulation.table": model.final_layer.adaLN_modulation.table}
    )
    return model.eval()


__all__ = [
    "TableModulation",
    "convert_diffusers_latte",
    "convert_official_latte",
    "load_official_checkpoint",
    "official_config",
]
