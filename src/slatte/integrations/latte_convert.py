"""Latte checkpoints → slatte's `VideoDiT`.

Official Latte (github.com/Vchitect/Latte) comes in two architectures.

**`models/latte.py` and `models/latte_img.py`** (FaceForensics, SkyTimelapse, Taichi-HD:
unconditional, `extras=1`; UCF-101: class-conditional, `extras=2`) are DiT-shaped like slatte's
VideoDiT, so `convert_official_latte` is a renaming plus one reshape:

| official key | slatte key |
| --- | --- |
| `x_embedder.proj.weight` (D, C, p, p) conv | `x_embedder.proj.weight` (D, p·p·C) linear, (p, q, c) order |
| `t_embedder.mlp.{0,2}.*` | same |
| `y_embedder.embedding_table.weight` (classes + 1, D), `extras=2` only | same (last row: the null class) |
| `blocks.{i}.attn.qkv.*`, `blocks.{i}.attn.proj.*` | same |
| `blocks.{i}.mlp.fc{1,2}.*` | same |
| `blocks.{i}.adaLN_modulation.1.*` | same |
| `final_layer.{linear,adaLN_modulation.1}.*` | same |
| `pos_embed` (1, S, D), `temp_embed` (1, F, D) fixed sin-cos | recomputed; checked equal |

Even blocks are spatial, odd temporal (official and slatte alike). Without a `y_embedder` the model
is unconditional (`num_classes=0`). The number of heads is not stored in the weights: it is taken
from the Latte size with that hidden width (S 6, B 12, L/XL 16) unless given. Latte-img (joint
video + image training, `use_image_num`) has the same weights and, for a video, the same forward;
its image frames skip the temporal blocks, which is what the model converted with
`temporal_attentions=False` computes. `extras=78` of `models/latte.py` / `latte_img.py` (a
projected text embedding added to the timestep) has no VideoDiT counterpart and is refused.

**`models/latte_t2v.py`** (Latte-T2V / Latte-1, and Latte-0, its first release, sampled as a
text-to-image model with `enable_temporal_attentions=False`): PixArt-α-style blocks with T5
cross-attention. diffusers' `LatteTransformer3DModel` is the same model with the same parameter
names, so both map onto a text-conditioned VideoDiT with PixArt's options
(`cross_attn_norm=False`, `block_modulation="table"`, `final_modulation="table"`,
`single_frame_temporal_embed=False`) by one function, from the state dict and the transformer's
config (`config.json` beside the official weights; the diffusers model's `config`):

| Latte-T2V / diffusers key | slatte key |
| --- | --- |
| `pos_embed.proj.weight` (D, C, p, p) conv | `x_embedder.proj.weight` (D, p·p·C), (p, q, c) order |
| `adaln_single.emb.timestep_embedder.linear_{1,2}.*` | `t_embedder.mlp.{0,2}.*` |
| `adaln_single.linear.*` | `shared_modulation.1.*` |
| `caption_projection.linear_{1,2}.*` | `text_embedder.fc{1,2}.*` |
| `transformer_blocks.{j}.*` (spatial) | `blocks.{2j}.*` (`blocks.{j}.*` without temporal attentions) |
| `temporal_transformer_blocks.{j}.*` | `blocks.{2j+1}.*` (dropped without temporal attentions) |
| `….attn1.to_{q,k,v}.*` (concatenated) , `….attn1.to_out.0.*` | `….attn.qkv.*`, `….attn.proj.*` |
| `….attn2.to_q.*`, `….attn2.to_{k,v}.*`, `….attn2.to_out.0.*` | `….cross_attn.{q,kv,proj}.*` |
| `….ff.net.0.proj.*`, `….ff.net.2.*` | `….mlp.fc{1,2}.*` |
| `….scale_shift_table` (6, D) | same |
| `scale_shift_table` (2, D), `proj_out.*` | `final_layer.scale_shift_table`, `final_layer.linear.*` |
| `pos_embed.pos_embed`, `temp_pos_embed` fixed sin-cos (when present) | recomputed; checked equal |

Attention without biases (`attention_bias=False`) gets zero q/k/v biases. `temporal_attentions=False`
gives a `block_pattern="spatial"` VideoDiT: every frame is an image, as the official forward with
`enable_temporal_attentions=False`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import VideoDiT, VideoDiTConfig
from .diffusers_common import diffusers_version

# Latte's sizes: hidden width → heads (Latte-S/B/L/XL).
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
_RENAMED_KEYS = ("t_embedder.", "y_embedder.", "blocks.", "final_layer.")
# Class names a Latte-T2V transformer directory's config.json may carry: the official model's and
# diffusers' port of it (same parameter names).
_T2V_CLASSES = ("LatteT2V", "LatteTransformer3DModel")
# The official LatteT2V's constructor defaults, for keys its config.json leaves out.
_T2V_DEFAULTS = {
    "out_channels": None,
    "attention_bias": False,
    "activation_fn": "geglu",
    "norm_type": "layer_norm",
    "norm_elementwise_affine": True,
    "norm_eps": 1e-5,
    "video_length": 16,
    "caption_channels": None,
    "cross_attention_dim": None,
}
_T2V_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _load_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of an official Latte checkpoint file (`.pt` / `.bin`, or
    `.safetensors`): its "ema" entry if present, else "model", else the file itself; a DDP
    "module." prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Latte checkpoint {path} does not exist")
    checkpoint = _load_state(path)
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


def _check_tables(
    tables: Iterable[tuple[str, torch.Tensor, torch.Tensor]], source: str, hint: str
) -> None:
    """The fixed sin-cos tables are recomputed by slatte, so a checkpoint's must be the same."""
    for name, theirs, ours in tables:
        theirs = theirs.reshape(ours.shape).float()
        if not torch.allclose(theirs, ours, atol=1e-5):
            raise ValueError(
                f"{name} of {source} differs from slatte's sin-cos table (max difference "
                f"{(theirs - ours).abs().max():.3g}); {hint}"
            )


# ---------------------------------------------------------------------------------------------
# Official Latte: models/latte.py, models/latte_img.py
# ---------------------------------------------------------------------------------------------


def official_config(
    state: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    temporal_attentions: bool = True,
) -> VideoDiTConfig:
    """The VideoDiTConfig of an official Latte state dict (`models/latte.py` or `latte_img.py`):
    class-conditional with a `y_embedder`, else unconditional. `temporal_attentions=False`:
    the spatial blocks only (`block_pattern="spatial"`)."""
    if "adaln_single.linear.weight" in state:
        raise ValueError(
            "this is a Latte-T2V state dict (models/latte_t2v.py), whose geometry is in its "
            "transformer's config.json: pass the directory holding config.json and the weights"
        )
    if "text_embedding_projection.1.weight" in state:
        raise ValueError(
            "this Latte checkpoint adds a projected text embedding to the timestep (extras=78 of "
            "models/latte.py / latte_img.py), which slatte's VideoDiT does not have; the "
            "text-to-video Latte that slatte converts is models/latte_t2v.py"
        )
    conv = _require(state, "x_embedder.proj.weight")  # (D, C, p, p)
    if conv.dim() != 4 or conv.shape[2] != conv.shape[3]:
        raise ValueError(f"x_embedder.proj.weight must be (D, C, p, p), got {tuple(conv.shape)}")
    hidden, in_channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
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
    labels = state.get("y_embedder.embedding_table.weight")
    return VideoDiTConfig(
        input_size=grid * patch,
        num_frames=_require(state, "temp_embed").shape[1],
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth if temporal_attentions else (depth + 1) // 2,
        num_heads=num_heads,
        patch_size=patch,
        mlp_ratio=_require(state, "blocks.0.mlp.fc1.weight").shape[0] / hidden,
        num_classes=0 if labels is None else labels.shape[0] - 1,
        learn_sigma=out == 2 * in_channels,
        block_pattern="alternating" if temporal_attentions else "spatial",
    )


def convert_official_latte(
    state: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    temporal_attentions: bool = True,
) -> VideoDiT:
    """An official Latte state dict (`models/latte.py` / `latte_img.py`, unconditional or
    class-conditional) → slatte VideoDiT (fp32, eval mode). `temporal_attentions=False` keeps the
    spatial blocks only: the image model that Latte-img applies to its image frames."""
    config = official_config(state, num_heads=num_heads, temporal_attentions=temporal_attentions)
    model = VideoDiT(config)
    conv = state["x_embedder.proj.weight"]
    weights = {
        # The stride-p convolution as a linear map of (p, q, c)-ordered patch features.
        "x_embedder.proj.weight": conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1),
        "x_embedder.proj.bias": _require(state, "x_embedder.proj.bias"),
    }
    for key, value in state.items():
        if not key.startswith(_RENAMED_KEYS):
            continue
        if key.startswith("blocks.") and not temporal_attentions:
            _, index, rest = key.split(".", 2)
            if int(index) % 2:
                continue  # a temporal block
            key = f"blocks.{int(index) // 2}.{rest}"
        weights[key] = value
    expected = set(model.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise ValueError(
            f"official Latte keys do not match a {config.depth}-block VideoDiT: missing "
            f"{sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}"
        )
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    tables = (
        ("pos_embed", state["pos_embed"], model.pos_embed),
        ("temp_embed", state["temp_embed"], model.temp_embed),
    )
    _check_tables(tables, "the checkpoint", "the checkpoint uses another position scheme")
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Latte-T2V: official models/latte_t2v.py and diffusers' LatteTransformer3DModel
# ---------------------------------------------------------------------------------------------


def _t2v_config(
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    name: str,
    temporal_attentions: bool,
) -> VideoDiTConfig:
    required = (
        "num_attention_heads", "attention_head_dim", "in_channels", "num_layers", "sample_size",
        "patch_size",
    )  # fmt: skip
    missing = [key for key in required if config.get(key) is None]
    if missing:
        raise ValueError(f"the config of this {name} lacks {missing}")
    cfg = {**_T2V_DEFAULTS, **config}
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    in_channels = cfg["in_channels"]
    out_channels = cfg["out_channels"] or in_channels
    problems = []
    if cfg["norm_type"] != "ada_norm_single":
        problems.append(f"norm_type={cfg['norm_type']!r} (needs 'ada_norm_single')")
    if cfg["norm_elementwise_affine"]:
        problems.append("norm_elementwise_affine=True (needs False)")
    if cfg["norm_eps"] != 1e-6:
        problems.append(f"norm_eps={cfg['norm_eps']} (needs 1e-6)")
    if cfg["activation_fn"] != "gelu-approximate":
        problems.append(f"activation_fn={cfg['activation_fn']!r} (needs 'gelu-approximate')")
    if cfg["cross_attention_dim"] != hidden:
        problems.append(f"cross_attention_dim={cfg['cross_attention_dim']} (needs {hidden})")
    if cfg["caption_channels"] is None:
        problems.append("caption_channels=None (needs the text encoder's width)")
    if out_channels not in (in_channels, 2 * in_channels):
        problems.append(
            f"out_channels={out_channels} (needs in_channels={in_channels} or twice that)"
        )
    if problems:
        raise ValueError(f"cannot convert this {name} to a VideoDiT: " + "; ".join(problems))
    mlp_hidden = _require(state, "transformer_blocks.0.ff.net.0.proj.weight").shape[0]
    return VideoDiTConfig(
        input_size=cfg["sample_size"],
        num_frames=cfg["video_length"],
        in_channels=in_channels,
        hidden_size=hidden,
        depth=cfg["num_layers"] * (2 if temporal_attentions else 1),
        num_heads=cfg["num_attention_heads"],
        patch_size=cfg["patch_size"],
        mlp_ratio=mlp_hidden / hidden,
        num_classes=0,
        learn_sigma=out_channels == 2 * in_channels,
        block_pattern="alternating" if temporal_attentions else "spatial",
        text_dim=cfg["caption_channels"],
        cross_attn_norm=False,
        block_modulation="table",
        final_modulation="table",
        single_frame_temporal_embed=False,
    )


class _Renamer:
    """Collects slatte weights from a Latte-T2V state dict and remembers which keys it read."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state
        self.used: set[str] = set()
        self.weights: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return _require(self.state, key)

    def linear(self, sources: list[str], target: str) -> None:
        """Linears of one input as one (their outputs concatenated, e.g. q, k, v → qkv); a
        linear without bias gets a zero one."""
        weights, biases = [], []
        for source in sources:
            weight = self.take(f"{source}.weight")
            weights.append(weight)
            bias = f"{source}.bias"
            biases.append(self.take(bias) if bias in self.state else weight.new_zeros(len(weight)))
        self.weights[f"{target}.weight"] = torch.cat(weights)
        self.weights[f"{target}.bias"] = torch.cat(biases)


def _convert_t2v(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    name: str,
    temporal_attentions: bool,
) -> VideoDiT:
    """A Latte-T2V state dict (+ the fixed tables where the source holds them) and its
    transformer config → VideoDiT (fp32, eval)."""
    slatte_config = _t2v_config(config, state, name, temporal_attentions)
    model = VideoDiT(slatte_config)
    r = _Renamer(state)
    conv = r.take("pos_embed.proj.weight")  # (D, C, p, p)
    r.weights["x_embedder.proj.weight"] = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)
    r.weights["x_embedder.proj.bias"] = r.take("pos_embed.proj.bias")
    r.linear(["adaln_single.emb.timestep_embedder.linear_1"], "t_embedder.mlp.0")
    r.linear(["adaln_single.emb.timestep_embedder.linear_2"], "t_embedder.mlp.2")
    r.linear(["adaln_single.linear"], "shared_modulation.1")
    r.linear(["caption_projection.linear_1"], "text_embedder.fc1")
    r.linear(["caption_projection.linear_2"], "text_embedder.fc2")
    r.linear(["proj_out"], "final_layer.linear")
    r.weights["final_layer.scale_shift_table"] = r.take("scale_shift_table")
    spatial = [f"transformer_blocks.{j}" for j in range(config["num_layers"])]
    temporal = [f"temporal_transformer_blocks.{j}" for j in range(config["num_layers"])]
    # Execution order: spatial, temporal, spatial, ... (or spatial only).
    sources = (
        [b for pair in zip(spatial, temporal, strict=True) for b in pair]
        if temporal_attentions
        else spatial
    )
    for i, src in enumerate(sources):
        dst = f"blocks.{i}"
        r.linear([f"{src}.attn1.to_{x}" for x in "qkv"], f"{dst}.attn.qkv")
        r.linear([f"{src}.attn1.to_out.0"], f"{dst}.attn.proj")
        r.weights[f"{dst}.scale_shift_table"] = r.take(f"{src}.scale_shift_table")
        r.linear([f"{src}.ff.net.0.proj"], f"{dst}.mlp.fc1")
        r.linear([f"{src}.ff.net.2"], f"{dst}.mlp.fc2")
        if src in spatial:
            r.linear([f"{src}.attn2.to_q"], f"{dst}.cross_attn.q")
            r.linear([f"{src}.attn2.to_k", f"{src}.attn2.to_v"], f"{dst}.cross_attn.kv")
            r.linear([f"{src}.attn2.to_out.0"], f"{dst}.cross_attn.proj")
    ignored = {"pos_embed.pos_embed", "temp_pos_embed"}
    if not temporal_attentions:
        ignored |= {k for k in state if k.startswith("temporal_transformer_blocks.")}
    unread = set(state) - r.used - ignored
    if unread:
        raise ValueError(
            f"this {name} has parameters a {slatte_config.depth}-block VideoDiT has no place for: "
            f"{sorted(unread)[:6]}"
        )
    model.load_state_dict({k: v.float() for k, v in r.weights.items()})
    # Latte-T2V interpolates the positions of larger models (interpolation_scale =
    # sample_size // 64); slatte's table is the plain one.
    scaled = "Latte-T2V scales the positions of models with sample_size >= 128, slatte does not"
    tables = [
        (key, state[key], ours)
        for key, ours in (
            ("pos_embed.pos_embed", model.pos_embed),
            ("temp_pos_embed", model.temp_embed),
        )
        if key in state
    ]
    _check_tables(tables, f"this {name}", f"{scaled} (sample_size={slatte_config.input_size})")
    if slatte_config.input_size >= 128:
        raise ValueError(f"this {name} has sample_size={slatte_config.input_size}: {scaled}")
    return model.eval()


def _transformer_directory(
    directory: str | os.PathLike, what: str, classes: tuple[str, ...]
) -> tuple[Path, dict]:
    """`directory` (a transformer's own folder, or a pipeline folder holding it in
    `transformer/`) and its config.json, whose class must be one of `classes`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory: {directory} does not exist")
    if not (directory / "config.json").is_file() and (directory / "transformer").is_dir():
        directory = directory / "transformer"
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{directory} is not a transformer or pipeline directory (no config.json, "
            f"no transformer/config.json)"
        )
    config = json.loads(config_file.read_text())
    class_name = config.get("_class_name")
    if class_name not in classes:
        raise ValueError(f"{config_file} names class {class_name!r}; {what} is one of {classes}")
    return directory, config


def load_official_t2v(
    directory: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and config of an official Latte-T2V transformer directory (or a pipeline
    directory with it in `transformer/`): `config.json` plus the weights, as
    `diffusion_pytorch_model.safetensors` / `.bin` or one `.pt` training checkpoint."""
    directory, config = _transformer_directory(directory, "a Latte-T2V transformer", _T2V_CLASSES)
    weights = [directory / f for f in _T2V_WEIGHT_FILES if (directory / f).is_file()]
    weights = weights or sorted(directory.glob("*.pt"))
    if len(weights) != 1:
        raise FileNotFoundError(
            f"{directory} must hold one weights file ({' or '.join(_T2V_WEIGHT_FILES)} or one "
            f".pt checkpoint), found {[w.name for w in weights]}"
        )
    return load_official_checkpoint(weights[0]), config


@torch.no_grad()
def convert_official_latte_t2v(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    temporal_attentions: bool = True,
) -> VideoDiT:
    """An official Latte-T2V state dict (`models/latte_t2v.py`) and its transformer's
    config.json contents → text-conditioned slatte VideoDiT (fp32, eval).

    Inputs: the official model takes (B, C, F, H, W), VideoDiT (B, F, C, H, W); its
    `encoder_hidden_states` (T5 states) are VideoDiT's `text`. `temporal_attentions=False` is
    the official `enable_temporal_attentions=False` (Latte-0's text-to-image sampling)."""
    return _convert_t2v(state, config, "Latte-T2V checkpoint", temporal_attentions)


@torch.no_grad()
def convert_diffusers_latte(
    transformer: nn.Module, *, temporal_attentions: bool = True
) -> VideoDiT:
    """diffusers `LatteTransformer3DModel` → text-conditioned slatte VideoDiT (fp32, eval).

    Inputs differ only in layout: diffusers takes (B, C, F, H, W), VideoDiT (B, F, C, H, W);
    `encoder_hidden_states` is VideoDiT's `text` (diffusers' Latte pipeline passes no text mask;
    VideoDiT's `text_mask` may be given or left out). `temporal_attentions=False` is diffusers'
    `enable_temporal_attentions=False`. The result is a plain VideoDiT: `save_model` /
    `load_model` keep it as it is.
    """
    name = type(transformer).__name__
    if name != "LatteTransformer3DModel":
        raise ValueError(f"convert_diffusers_latte needs a LatteTransformer3DModel, got {name}")
    # Buffers too: diffusers keeps its sin-cos tables out of the state dict.
    state = {**transformer.state_dict(), **dict(transformer.named_buffers())}
    return _convert_t2v(state, transformer.config, name, temporal_attentions)


def load_diffusers_latte(directory: str | os.PathLike) -> nn.Module:
    """A local diffusers `LatteTransformer3DModel`: `directory` is the transformer's own folder
    or a pipeline folder holding it in `transformer/`. Loaded in fp32, nothing downloaded."""
    directory, _ = _transformer_directory(
        directory, "a diffusers Latte transformer", ("LatteTransformer3DModel",)
    )
    diffusers_version()  # a clear ImportError without diffusers
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel.from_pretrained(directory, torch_dtype=torch.float32).eval()


def convert_official_checkpoint(
    path: str | os.PathLike,
    *,
    num_heads: int | None = None,
    temporal_attentions: bool = True,
) -> VideoDiT:
    """Any official Latte checkpoint → VideoDiT: a `.pt` file of `models/latte.py` /
    `latte_img.py` (`num_heads` as in `official_config`), or a Latte-T2V transformer (or
    pipeline) directory (its config.json names the heads)."""
    if Path(path).is_dir():
        if num_heads is not None:
            raise ValueError(
                f"num_heads={num_heads} applies to .pt checkpoints of models/latte.py; the "
                "Latte-T2V directory's config.json names its heads"
            )
        state, config = load_official_t2v(path)
        return convert_official_latte_t2v(state, config, temporal_attentions=temporal_attentions)
    return convert_official_latte(
        load_official_checkpoint(path), num_heads=num_heads, temporal_attentions=temporal_attentions
    )


__all__ = [
    "convert_diffusers_latte",
    "convert_official_checkpoint",
    "convert_official_latte",
    "convert_official_latte_t2v",
    "load_diffusers_latte",
    "load_official_checkpoint",
    "load_official_t2v",
    "official_config",
]
