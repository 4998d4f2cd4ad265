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
maps onto a text-conditioned VideoDiT with PixArt's options (`cross_attn_norm=False`,
`block_modulation="table"`, `final_modulation="table"`, `single_frame_temporal_embed=False`)
by `convert_diffusers_latte`:

| diffusers key | slatte key |
| --- | --- |
| `pos_embed.proj.weight` (D, C, p, p) conv | `x_embedder.proj.weight` (D, p·p·C), (p, q, c) order |
| `adaln_single.emb.timestep_embedder.linear_{1,2}.*` | `t_embedder.mlp.{0,2}.*` |
| `adaln_single.linear.*` | `shared_modulation.1.*` |
| `caption_projection.linear_{1,2}.*` | `text_embedder.fc{1,2}.*` |
| `transformer_blocks.{j}.*` (spatial) | `blocks.{2j}.*` |
| `temporal_transformer_blocks.{j}.*` | `blocks.{2j+1}.*` |
| `….attn1.to_{q,k,v}.*` (concatenated) , `….attn1.to_out.0.*` | `….attn.qkv.*`, `….attn.proj.*` |
| `….attn2.to_q.*`, `….attn2.to_{k,v}.*`, `….attn2.to_out.0.*` | `….cross_attn.{q,kv,proj}.*` |
| `….ff.net.0.proj.*`, `….ff.net.2.*` | `….mlp.fc{1,2}.*` |
| `….scale_shift_table` (6, D) | same |
| `scale_shift_table` (2, D), `proj_out.*` | `final_layer.scale_shift_table`, `final_layer.linear.*` |
| `pos_embed.pos_embed`, `temp_pos_embed` fixed sin-cos | recomputed; checked equal |

Attention without biases (`attention_bias=False`) gets zero q/k/v biases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..models import VideoDiT, VideoDiTConfig
from .diffusers_common import diffusers_version

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


def _diffusers_latte_config(transformer: nn.Module) -> VideoDiTConfig:
    cfg = transformer.config
    name = type(transformer).__name__
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    out_channels = transformer.out_channels
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
    if out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
        problems.append(
            f"out_channels={out_channels} (needs in_channels={cfg.in_channels} or twice that)"
        )
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
        learn_sigma=out_channels == 2 * cfg.in_channels,
        block_pattern="alternating",
        text_dim=cfg.caption_channels,
        cross_attn_norm=False,
        block_modulation="table",
        final_modulation="table",
        single_frame_temporal_embed=False,
    )


def _linear(module: nn.Linear, prefix: str) -> dict[str, torch.Tensor]:
    bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_features)
    return {f"{prefix}.weight": module.weight, f"{prefix}.bias": bias}


def _fused(modules: list[nn.Linear], prefix: str) -> dict[str, torch.Tensor]:
    """Several linears of one input as one (their outputs concatenated), e.g. q, k, v → qkv."""
    parts = [_linear(m, prefix) for m in modules]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


@torch.no_grad()
def convert_diffusers_latte(transformer: nn.Module) -> VideoDiT:
    """diffusers `LatteTransformer3DModel` → text-conditioned slatte VideoDiT (fp32, eval).

    Inputs differ only in layout: diffusers takes (B, C, F, H, W), VideoDiT (B, F, C, H, W);
    `encoder_hidden_states` is VideoDiT's `text` (diffusers' Latte pipeline passes no text mask;
    VideoDiT's `text_mask` may be given or left out). diffusers' `enable_temporal_attentions=False`
    has no VideoDiT counterpart. The result is a plain VideoDiT: `save_model` / `load_model`
    keep it as it is.
    """
    name = type(transformer).__name__
    if name != "LatteTransformer3DModel":
        raise ValueError(f"convert_diffusers_latte needs a LatteTransformer3DModel, got {name}")
    config = _diffusers_latte_config(transformer)
    model = VideoDiT(config)
    conv = transformer.pos_embed.proj.weight  # (D, C, p, p)
    timestep = transformer.adaln_single.emb.timestep_embedder
    caption = transformer.caption_projection
    weights = {
        "x_embedder.proj.weight": conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1),
        "x_embedder.proj.bias": transformer.pos_embed.proj.bias,
        **_linear(timestep.linear_1, "t_embedder.mlp.0"),
        **_linear(timestep.linear_2, "t_embedder.mlp.2"),
        **_linear(transformer.adaln_single.linear, "shared_modulation.1"),
        **_linear(caption.linear_1, "text_embedder.fc1"),
        **_linear(caption.linear_2, "text_embedder.fc2"),
        **_linear(transformer.proj_out, "final_layer.linear"),
        "final_layer.scale_shift_table": transformer.scale_shift_table,
    }
    pairs = zip(
        transformer.transformer_blocks, transformer.temporal_transformer_blocks, strict=True
    )
    sources = [blk for pair in pairs for blk in pair]  # execution order: spatial, temporal, ...
    for i, src in enumerate(sources):
        prefix = f"blocks.{i}"
        attn = src.attn1
        weights.update(_fused([attn.to_q, attn.to_k, attn.to_v], f"{prefix}.attn.qkv"))
        weights.update(_linear(attn.to_out[0], f"{prefix}.attn.proj"))
        weights[f"{prefix}.scale_shift_table"] = src.scale_shift_table
        weights.update(_linear(src.ff.net[0].proj, f"{prefix}.mlp.fc1"))
        weights.update(_linear(src.ff.net[2], f"{prefix}.mlp.fc2"))
        if src.attn2 is not None:
            cross = src.attn2
            weights.update(_linear(cross.to_q, f"{prefix}.cross_attn.q"))
            weights.update(_fused([cross.to_k, cross.to_v], f"{prefix}.cross_attn.kv"))
            weights.update(_linear(cross.to_out[0], f"{prefix}.cross_attn.proj"))
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    # The fixed tables are recomputed by slatte, so they must be the ones diffusers uses.
    tables = (
        ("pos_embed", transformer.pos_embed.pos_embed, model.pos_embed),
        ("temp_pos_embed", transformer.temp_pos_embed, model.temp_embed),
    )
    for table, theirs, ours in tables:
        theirs = theirs.reshape(ours.shape).float()
        if not torch.allclose(theirs, ours, atol=1e-5):
            raise ValueError(
                f"{table} of this {name} differs from slatte's sin-cos table (max difference "
                f"{(theirs - ours).abs().max():.3g}); diffusers scales the positions of models "
                f"with sample_size >= 128 (got {transformer.config.sample_size}), slatte does not"
            )
    return model.eval()


def load_diffusers_latte(directory: str | os.PathLike) -> nn.Module:
    """A local diffusers `LatteTransformer3DModel`: `directory` is the transformer's own folder
    or a pipeline folder holding it in `transformer/`. Loaded in fp32, nothing downloaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"diffusers model directory {directory} does not exist")
    if not (directory / "config.json").is_file() and (directory / "transformer").is_dir():
        directory = directory / "transformer"
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{directory} is not a diffusers transformer or pipeline directory (no config.json, "
            f"no transformer/config.json)"
        )
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name != "LatteTransformer3DModel":
        raise ValueError(
            f"{config_file} names class {class_name!r}; latte-diffusers converts a "
            f"LatteTransformer3DModel"
        )
    diffusers_version()  # a clear ImportError without diffusers
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel.from_pretrained(directory, torch_dtype=torch.float32).eval()


__all__ = [
    "convert_diffusers_latte",
    "convert_official_latte",
    "load_diffusers_latte",
    "load_official_checkpoint",
    "official_config",
]
