"""Every official Latte checkpoint → slatte VideoDiT: converted, sampled and compared with the
official model on tiny random models made here (the official source is never imported).

Two anchors:
- `models/latte.py` / `models/latte_img.py` (unconditional FaceForensics, SkyTimelapse,
  Taichi-HD; class-conditional UCF-101; Latte-img's joint video + image forward): `_official`
  below, a forward written from those files. It is itself checked against the outputs the
  official code recorded on a tiny model (fixtures/latte_official_tiny.safetensors).
- `models/latte_t2v.py` (Latte-T2V, and Latte-0 sampled with
  `enable_temporal_attentions=False`): diffusers' `LatteTransformer3DModel`, the port of that file
  with the same parameter names, whose weights are written as an official Latte-T2V directory
  (config.json naming class "LatteT2V" with the official constructor's keys, plus the weights).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from test_latte_convert import _diffusers_latte  # the tiny diffusers Latte made there

from slatte.diffusion import create_diffusion, ddim_sample
from slatte.guidance import guided_model_fn
from slatte.integrations.cli import add_convert_parser
from slatte.integrations.latte_convert import (
    convert_diffusers_latte,
    convert_official_checkpoint,
    convert_official_latte,
    convert_official_latte_t2v,
    load_official_t2v,
)
from slatte.models import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "latte_official_tiny.safetensors"
HEADS = 2

# ---------------------------------------------------------------------------------------------
# models/latte.py and models/latte_img.py, written from the official files
# ---------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE's `get_1d_sincos_pos_embed_from_grid`: sines then cosines, in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega
    return torch.cat([out.sin(), out.cos()], 1).float()


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's `get_2d_sincos_pos_embed`: np.meshgrid(w, h) puts the column first."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat(
        [_sincos_1d(dim // 2, cols.flatten()), _sincos_1d(dim // 2, rows.flatten())], 1
    )


def _official_state(*, classes: int = 0, hidden: int = 16, depth: int = 4, frames: int = 3):
    """A random state dict with the official key names and shapes (timm PatchEmbed / Mlp, 4
    latent channels, 8×8 latents, patch 2, learned sigma); `classes` > 0 adds the
    `y_embedder` of `extras=2` (with its null-class row)."""
    g = torch.Generator().manual_seed(classes)
    d, p, c = hidden, 2, 4

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    state = {
        "x_embedder.proj.weight": rnd(d, c, p, p),
        "x_embedder.proj.bias": rnd(d),
        "t_embedder.mlp.0.weight": rnd(d, 256),
        "t_embedder.mlp.0.bias": rnd(d),
        "t_embedder.mlp.2.weight": rnd(d, d),
        "t_embedder.mlp.2.bias": rnd(d),
        "pos_embed": _sincos_2d(d, 4)[None],
        "temp_embed": _sincos_1d(d, torch.arange(frames))[None],
        "final_layer.linear.weight": rnd(p * p * 2 * c, d),
        "final_layer.linear.bias": rnd(p * p * 2 * c),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * d, d),
        "final_layer.adaLN_modulation.1.bias": rnd(2 * d),
    }
    shapes = {"attn.qkv": 3 * d, "attn.proj": d, "mlp.fc1": 4 * d, "adaLN_modulation.1": 6 * d}
    for i in range(depth):
        for name, rows in shapes.items():
            state[f"blocks.{i}.{name}.weight"] = rnd(rows, d)
            state[f"blocks.{i}.{name}.bias"] = rnd(rows)
        state[f"blocks.{i}.mlp.fc2.weight"] = rnd(d, 4 * d)
        state[f"blocks.{i}.mlp.fc2.bias"] = rnd(d)
    if classes:
        state["y_embedder.embedding_table.weight"] = rnd(classes + 1, d)
    return state


def _linear(state, name, x):
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def _modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def _block(state, name, x, c):
    """`TransformerBlock.forward` (adaLN-Zero) with timm's attention in 'math' mode."""
    mods = _linear(state, f"{name}.adaLN_modulation.1", F.silu(c)).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
    b, n, d = x.shape
    qkv = _linear(state, f"{name}.attn.qkv", _modulate(x, shift_msa, scale_msa))
    q, k, v = qkv.reshape(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (d // HEADS) ** -0.5).softmax(-1)
    out = _linear(state, f"{name}.attn.proj", (attn @ v).transpose(1, 2).reshape(b, n, d))
    x = x + gate_msa[:, None] * out
    hidden = F.gelu(
        _linear(state, f"{name}.mlp.fc1", _modulate(x, shift_mlp, scale_mlp)), approximate="tanh"
    )
    return x + gate_mlp[:, None] * _linear(state, f"{name}.mlp.fc2", hidden)


def _official(state, x, t, y=None, use_image_num=0):
    """`Latte.forward` of models/latte_img.py in eval mode without sequence parallelism; with
    `use_image_num=0` it is models/latte.py's (`extras` 1 or 2: `y` given or not). The last
    `use_image_num` frames are images: they skip the temporal blocks and their embedding."""
    b, f = x.shape[:2]
    video = f - use_image_num
    conv = state["x_embedder.proj.weight"]
    p = conv.shape[-1]
    h = F.conv2d(x.flatten(0, 1), conv, state["x_embedder.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + state["pos_embed"]  # ((b f), s, d)
    s = h.shape[1]
    args = t[:, None].float() * torch.exp(-math.log(10000) * torch.arange(128) / 128)[None]
    freq = torch.cat([args.cos(), args.sin()], dim=-1)
    c = _linear(state, "t_embedder.mlp.2", F.silu(_linear(state, "t_embedder.mlp.0", freq)))
    if y is not None:
        c = c + state["y_embedder.embedding_table.weight"][y]
    c_spatial, c_temporal = c.repeat_interleave(f, 0), c.repeat_interleave(s, 0)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(0, depth, 2):
        h = _block(state, f"blocks.{i}", h, c_spatial)
        h = rearrange(h, "(b f) s d -> (b s) f d", b=b)
        h_video, h_image = h[:, :video], h[:, video:]
        if i == 0:
            h_video = h_video + state["temp_embed"]
        h_video = _block(state, f"blocks.{i + 1}", h_video, c_temporal)
        h = rearrange(torch.cat([h_video, h_image], 1), "(b s) f d -> (b f) s d", b=b)
    shift, scale = _linear(state, "final_layer.adaLN_modulation.1", F.silu(c_spatial)).chunk(2, 1)
    h = _linear(state, "final_layer.linear", _modulate(h, shift, scale))
    grid = round(s**0.5)
    return rearrange(h, "(b f) (g w) (p q c) -> b f c (g p) (w q)", b=b, g=grid, p=p, q=p)


def _inputs(frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, frames, 4, 8, 8, generator=g), torch.tensor([3, 800])


def _convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slatte")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli_convert(checkpoint, out, *extra, source="latte-official"):
    args = _convert_parser().parse_args(["convert", source, str(checkpoint), str(out), *extra])
    assert args.func(args) == 0
    return load_model(out)


def test_the_reference_forward_reproduces_the_outputs_recorded_with_the_official_code():
    data = load_file(str(FIXTURE))
    state = {k.removeprefix("model."): v for k, v in data.items() if k.startswith("model.")}
    with torch.no_grad():
        out = _official(state, data["input.x"], data["input.t"], data["input.y"])
    torch.testing.assert_close(out, data["output"], atol=1e-4, rtol=1e-4)
    # The fixture's model has this file's geometry: its fixed tables are the ones built here.
    tables = _official_state(classes=3)
    for name in ("pos_embed", "temp_embed"):
        torch.testing.assert_close(tables[name], state[name], atol=1e-6, rtol=0)


def test_unconditional_official_latte_converts_through_the_cli(tmp_path, capsys):
    """FaceForensics / SkyTimelapse / Taichi-HD: `extras=1`, no y_embedder."""
    state = _official_state()
    torch.save({"ema": {f"module.{k}": v for k, v in state.items()}, "opt": {}}, tmp_path / "a.pt")
    model = _cli_convert(tmp_path / "a.pt", tmp_path / "out", "--num-heads", str(HEADS))
    assert json.loads(capsys.readouterr().out)["config"]["num_classes"] == 0
    assert model.y_embedder is None
    x, t = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), _official(state, x, t), atol=1e-4, rtol=1e-4)


def test_latte_img_joint_forward_is_the_video_model_beside_the_image_model():
    """Latte-img with `use_image_num` images after the video frames: the video frames are the
    converted video model's output, the images that of the model converted without temporal
    attentions (the same weights' spatial blocks)."""
    state = _official_state(depth=4)
    video_model = convert_official_latte(state, num_heads=HEADS)
    image_model = convert_official_latte(state, num_heads=HEADS, temporal_attentions=False)
    assert [b.kind for b in image_model.blocks] == ["spatial", "spatial"]
    assert image_model.config.block_pattern == "spatial"
    x, t = _inputs(5)
    with torch.no_grad():
        expected = _official(state, x, t, use_image_num=2)
        out = torch.cat([video_model(x[:, :3], t), image_model(x[:, 3:], t)], dim=1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("classes", [0, 3])
def test_converted_official_latte_samples_like_the_official_model(classes):
    state = _official_state(classes=classes)
    model = convert_official_latte(state, num_heads=HEADS)
    y = torch.tensor([2, 0]) if classes else None
    diffusion = create_diffusion("ddim4", learn_sigma=True)
    shape = (2, 3, 4, 8, 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = ddim_sample(diffusion, guided_model_fn(model, y=y), shape, noise=noise)
        theirs = ddim_sample(diffusion, lambda x, t: _official(state, x, t, y), shape, noise=noise)
    assert (theirs - noise).abs().mean() > 0.1  # the model moved the sample
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# models/latte_t2v.py, through diffusers' port of it
# ---------------------------------------------------------------------------------------------

# The official LatteT2V constructor's config keys that diffusers' port has too; the rest of the
# official config is written with the official defaults.
_OFFICIAL_ONLY = {
    "norm_num_groups": 32,
    "num_vector_embeds": None,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "double_self_attention": False,
    "upcast_attention": False,
    "attention_type": "default",
}


def _write_official_t2v(source, directory: Path, weights: str = "safetensors") -> Path:
    """`source`'s weights as an official Latte-T2V transformer directory."""
    directory.mkdir(parents=True)
    config = {k: v for k, v in source.config.items() if not k.startswith("_")}
    config = {"_class_name": "LatteT2V", **config, **_OFFICIAL_ONLY}
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(directory / "diffusion_pytorch_model.safetensors"))
    else:  # a training checkpoint, as sample_t2v.py's `ckpt`
        torch.save({"ema": {f"module.{k}": v for k, v in state.items()}}, directory / "t2v.pt")
    return directory


def _t2v_inputs(frames: int):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, frames, 8, 8, generator=g)  # the official layout (B, C, F, H, W)
    return x, torch.tensor([10, 700]), torch.randn(2, 5, 16, generator=g)


@pytest.mark.parametrize("weights", ["safetensors", "pt"])
def test_official_t2v_directory_converts_to_the_same_function(tmp_path, weights):
    source = _diffusers_latte()
    directory = _write_official_t2v(source, tmp_path / "pipe" / "transformer", weights)
    model = _cli_convert(tmp_path / "pipe", tmp_path / "out")
    assert [b.kind for b in model.blocks] == ["spatial", "temporal", "spatial", "temporal"]
    assert (model.config.text_dim, model.config.num_frames) == (16, 3)
    for frames in (3, 1):  # one frame: an image, without temporal embedding, as officially
        x, t, text = _t2v_inputs(frames)
        with torch.no_grad():
            expected = source(x, t, text).sample
            out = model(x.transpose(1, 2), t, text=text).transpose(1, 2)
        assert expected.abs().mean() > 0.5
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    assert load_official_t2v(directory)[1]["_class_name"] == "LatteT2V"


def test_latte0_without_temporal_attentions_is_the_official_image_model(tmp_path):
    """Latte-0's text-to-image sampling: `enable_temporal_attentions=False`."""
    source = _diffusers_latte()
    directory = _write_official_t2v(source, tmp_path / "t2v")
    source.save_pretrained(tmp_path / "diffusers")
    models = [
        _cli_convert(directory, tmp_path / "a", "--no-temporal-attentions"),
        _cli_convert(
            tmp_path / "diffusers", tmp_path / "b", "--no-temporal-attentions",
            source="latte-diffusers",
        ),
        convert_diffusers_latte(source, temporal_attentions=False),
    ]  # fmt: skip
    for model in models:
        assert model.config.block_pattern == "spatial" and len(model.blocks) == 2
        for frames in (3, 1):
            x, t, text = _t2v_inputs(frames)
            with torch.no_grad():
                expected = source(x, t, text, enable_temporal_attentions=False).sample
                out = model(x.transpose(1, 2), t, text=text).transpose(1, 2)
            torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


class _OfficialT2V(torch.nn.Module):
    """The diffusers model behind slatte's model_fn interface (layout (B, F, C, H, W))."""

    def __init__(self, source, enable_temporal_attentions: bool):
        super().__init__()
        self.source, self.temporal = source, enable_temporal_attentions
        self.config = argparse.Namespace(learn_sigma=True)

    def forward(self, x, t, y=None, *, text=None, text_mask=None):
        out = self.source(x.transpose(1, 2), t, text, enable_temporal_attentions=self.temporal)
        return out.sample.transpose(1, 2)


@pytest.mark.parametrize("temporal", [True, False])
def test_converted_t2v_samples_with_text_and_cfg_like_the_official_model(temporal):
    """T5 states in, as Latte's pipeline: the prompt's and the empty prompt's (CFG 4.5)."""
    source = _diffusers_latte()
    model = convert_diffusers_latte(source, temporal_attentions=temporal)
    g = torch.Generator().manual_seed(6)
    text, null_text = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    diffusion = create_diffusion("ddim4", learn_sigma=True)
    shape = (2, 3, 4, 8, 8)
    noise = torch.randn(shape, generator=g)
    guidance = dict(text=text, null_text=null_text, cfg_scale=4.5)
    with torch.no_grad():
        ours = ddim_sample(diffusion, guided_model_fn(model, **guidance), shape, noise=noise)
        reference = _OfficialT2V(source, temporal)
        theirs_fn = guided_model_fn(reference, **guidance, fork=False)
        theirs = ddim_sample(diffusion, theirs_fn, shape, noise=noise)
    assert (theirs - noise).abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_official_t2v_bad_input_is_a_clear_error(tmp_path):
    source = _diffusers_latte()
    directory = _write_official_t2v(source, tmp_path / "t2v")
    with pytest.raises(ValueError, match="num_heads=2 applies to .pt checkpoints"):
        convert_official_checkpoint(directory, num_heads=2)
    torch.save({}, directory / "extra.pt")
    (directory / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, directory / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"one weights file .* found \['extra.pt', 'oth"):
        load_official_t2v(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "_class_name": "Latte"}))
    with pytest.raises(ValueError, match="names class 'Latte'; a Latte-T2V transformer is one"):
        load_official_t2v(directory)
    state = source.state_dict()
    no_size = {k: v for k, v in config.items() if k != "sample_size"}
    with pytest.raises(ValueError, match=r"lacks \['sample_size'\]"):
        convert_official_latte_t2v(state, no_size)
    with pytest.raises(ValueError, match="activation_fn='geglu'"):
        convert_official_latte_t2v(state, {k: v for k, v in config.items() if k != "activation_fn"})
    fuser = {**state, "transformer_blocks.0.fuser.linear.weight": torch.zeros(16, 16)}
    with pytest.raises(ValueError, match=r"no place for: \['transformer_blocks.0.fuser"):
        convert_official_latte_t2v(fuser, config)
    with pytest.raises(ValueError, match="key 'transformer_blocks.1.attn2.to_q.weight' is missing"):
        convert_official_latte_t2v(
            {k: v for k, v in state.items() if "blocks.1.attn2.to_q" not in k}, config
        )
    # Without tables in the weights, the size alone tells that the positions would differ.
    big = {k: v for k, v in state.items() if k != "pos_embed.pos_embed"}
    with pytest.raises(ValueError, match="sample_size=128: Latte-T2V scales the positions"):
        convert_official_latte_t2v(big, {**config, "sample_size": 128})
