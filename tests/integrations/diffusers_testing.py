"""Tiny random diffusers video transformers (made here, never downloaded) and their inputs."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch

from slatte.integrations.diffusers_common import execution_blocks
from slatte.integrations.diffusers_stg import enable_stg

diffusers = pytest.importorskip("diffusers")


_WAN_SHAPE = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}


@functools.cache
def _tiny_wan(seed: int = 0, num_layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(**{**_WAN_SHAPE, "num_layers": num_layers}).eval()


@functools.cache
def _tiny_ltx(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.LTXVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=16,
    ).eval()


@functools.cache
def _tiny_ltx2(
    seed: int = 0, rope_type: str = "interleaved", ltx23: bool = True
) -> torch.nn.Module:
    torch.manual_seed(seed)
    # ltx23: LTX-2.3's per-head gates, and the processor that serves the model's own STG.
    return diffusers.LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=8,
        audio_cross_attention_dim=16,
        num_layers=2,
        caption_channels=16,
        gated_attn=ltx23,
        audio_gated_attn=ltx23,
        perturbed_attn=ltx23,
        rope_type=rope_type,
    ).eval()


@functools.cache
def _tiny_latte(seed: int = 0, patch_size: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.LatteTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=patch_size,
        cross_attention_dim=32,
        caption_channels=16,
        video_length=3,
        norm_elementwise_affine=False,
    ).eval()


@functools.cache
def _tiny_vace(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # Two VACE layers, as many as the test batch: the control scale's length equals it.
    return diffusers.WanVACETransformer3DModel(
        **_WAN_SHAPE, vace_layers=[0, 1], vace_in_channels=6
    ).eval()


@functools.cache
def _tiny_skyreels(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.SkyReelsV2Transformer3DModel(**_WAN_SHAPE).eval()


@functools.cache
def _tiny_hunyuan(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(4, 6, 6),
    ).eval()


@functools.cache
def _tiny_cogvideox(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=16,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        max_text_seq_length=6,
        use_rotary_positional_embeddings=True,
    ).eval()


@functools.cache
def _tiny_hunyuan15(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        text_embed_dim=16,
        text_embed_2_dim=8,
        image_embed_dim=8,
        rope_axes_dim=(4, 6, 6),
    ).eval()


@functools.cache
def _tiny_mochi(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        pooled_projection_dim=16,
        in_channels=4,
        out_channels=4,
        text_embed_dim=16,
        time_embed_dim=16,
        max_sequence_length=6,
    ).eval()


def model_inputs(name: str, batch: int = 2, seed: int = 1) -> dict:
    """Keyword inputs for the tiny model `name`, 3 frames each: Wan 8×8 latents in 2×2 patches
    (48 tokens per sample), LTX and LTX-2 4×4 unpatched (48; LTX-2 also 5 audio tokens), Latte
    8×8 (64 or 16 tokens per frame)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(10, 900, batch).round().long()
    if name == "wan":
        return {
            "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
            "timestep": t,
            "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g),
        }
    if name == "ltx":
        return {
            "hidden_states": torch.randn(batch, 3 * 4 * 4, 4, generator=g),
            "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
            "timestep": t,
            "encoder_attention_mask": torch.ones(batch, 5),
            "num_frames": 3,
            "height": 4,
            "width": 4,
        }
    if name == "ltx2":  # the second prompt padded: 4 of 6 text tokens real
        mask = (torch.arange(6) < torch.tensor([[6], [4]] * batch)[:batch]).long()
        return {
            "hidden_states": torch.randn(batch, 3 * 4 * 4, 4, generator=g),
            "audio_hidden_states": torch.randn(batch, 5, 4, generator=g),
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "audio_encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "timestep": t.float(),
            "encoder_attention_mask": mask,
            "audio_encoder_attention_mask": mask,
            "num_frames": 3,
            "height": 4,
            "width": 4,
            "audio_num_frames": 5,
        }
    if name == "latte":
        return {
            "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
            "timestep": t,
            "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
        }
    if name in ("vace", "skyreels"):
        inputs = model_inputs("wan", batch, seed)
        if name == "vace":
            inputs["control_hidden_states"] = torch.randn(batch, 6, 3, 8, 8, generator=g)
            inputs["control_hidden_states_scale"] = torch.tensor([0.5, 2.0])
        return inputs
    if name == "cogvideox":  # (B, F, C, H, W); 3 × 4 × 4 = 48 video tokens after the text
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        rotary = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=3)
        return {
            "hidden_states": torch.randn(batch, 3, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "timestep": t,
            "image_rotary_emb": rotary,
        }
    if name == "mochi":  # the second prompt padded: 4 of 6 text tokens real
        return {
            "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "timestep": t,
            "encoder_attention_mask": torch.arange(6) < torch.tensor([[6], [4]] * batch)[:batch],
        }
    if name == "hunyuan15":  # text-to-video (zero image embeddings); second prompt padded
        lengths = torch.tensor([[6, 3], [4, 2]] * batch)[:batch]
        return {
            "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
            "timestep": t.float(),
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "encoder_attention_mask": torch.arange(6) < lengths[:, :1],
            "encoder_hidden_states_2": torch.randn(batch, 3, 8, generator=g),
            "encoder_attention_mask_2": torch.arange(3) < lengths[:, 1:],
            "image_embeds": torch.zeros(batch, 2, 8),
        }
    if name == "hunyuan":  # the second prompt padded: 4 of 6 text tokens real
        return {
            "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
            "timestep": t,
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
            "encoder_attention_mask": (
                torch.arange(6) < torch.tensor([6, 4] * batch)[:batch, None]
            ),
            "pooled_projections": torch.randn(batch, 8, generator=g),
            "guidance": torch.full((batch,), 6000.0),
        }
    raise ValueError(name)


def tiny_wan(seed: int = 0, num_layers: int = 2) -> torch.nn.Module:
    # Building a model costs far more than copying one; tests get fresh copies to modify.
    return copy.deepcopy(_tiny_wan(seed, num_layers))


def tiny_wan22_pipeline(boundary_ratio: float):
    """A Wan2.2-style pipeline of two tiny experts (`transformer` for the high-noise steps,
    `transformer_2` below `boundary_ratio`); no tokenizer, text encoder or VAE: tests pass prompt
    embeddings and take latents."""
    return diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_wan(),
        transformer_2=tiny_wan(seed=1),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        boundary_ratio=boundary_ratio,
    )  # fmt: skip


def tiny_ltx(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_ltx(seed))


def tiny_ltx2(seed: int = 0, rope_type: str = "interleaved", ltx23: bool = True) -> torch.nn.Module:
    return copy.deepcopy(_tiny_ltx2(seed, rope_type, ltx23))


def tiny_latte(seed: int = 0, patch_size: int = 1) -> torch.nn.Module:
    # patch_size=1: 64 tokens per frame, enough for several SLA blocks of 16.
    return copy.deepcopy(_tiny_latte(seed, patch_size))


def tiny_vace(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_vace(seed))


def tiny_skyreels(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_skyreels(seed))


def tiny_hunyuan15(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_hunyuan15(seed))


def tiny_mochi(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_mochi(seed))


def tiny_cogvideox(seed: int = 0) -> torch.nn.Module:
    return copy.deepcopy(_tiny_cogvideox(seed))


def tiny_hunyuan(seed: int = 0) -> torch.nn.Module:
    # One dual-stream and one single-stream block; 2×2 patches: 48 video tokens.
    return copy.deepcopy(_tiny_hunyuan(seed))


MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "wan": tiny_wan,
    "ltx": tiny_ltx,
    "ltx2": tiny_ltx2,
    "latte": tiny_latte,
    "hunyuan": tiny_hunyuan,
    "cogvideox": tiny_cogvideox,
    "hunyuan15": tiny_hunyuan15,
    "mochi": tiny_mochi,
    "vace": tiny_vace,
    "skyreels": tiny_skyreels,
}


def naive_perturbed(model, inputs, index, strategy):
    """The perturbed prediction of a plain third pass, perturbing every row with hooks written
    independently of slatte's (whole batch, no row bookkeeping)."""
    return naive_perturbed_blocks(model, inputs, {index: strategy})


def naive_perturbed_blocks(model, inputs, strategies):
    """`naive_perturbed` with several blocks perturbed together: `{block index: strategy}`."""

    def skip_block(module, args, kwargs, output):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return h

    def attention(strategy, module, args, kwargs, output):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if strategy == "attention_block":
            return torch.zeros_like(output)
        if strategy == "attention_skip":
            return x
        return module.to_out[0](module.to_v(x))  # identity attention map

    handles = []
    for index, strategy in strategies.items():
        block = execution_blocks(model)[index]
        if strategy == "transformer_block":
            handles.append(block.register_forward_hook(skip_block, with_kwargs=True))
        else:
            hook = functools.partial(attention, strategy)
            handles.append(block.attn1.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(**inputs).sample
    finally:
        for handle in handles:
            handle.remove()


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def attention_inputs(model: torch.nn.Module, attn: torch.nn.Module, inputs: dict) -> dict:
    """The keyword arguments `attn` is called with in a forward of `model` on `inputs`."""
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        run(model, inputs)
    finally:
        handle.remove()
    return seen


def randomize_projections(model: torch.nn.Module) -> None:
    """Give every SLA projection random weights (they start at zero), so that they count."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "sla"):
                m.sla.proj_l.weight.normal_(std=0.5)
                m.sla.proj_l.bias.normal_(std=0.5)


def _record(transformer, calls):
    """Capture the inputs the pipeline passes (a pre-hook registered before STG's) and the
    output it receives (a hook registered after STG's), in `calls`, in call order."""

    def before(module, args, kwargs):
        calls.append({"model": module, "kwargs": dict(kwargs)})

    def after(module, args, kwargs, output):
        outputs = output if isinstance(output, tuple) else tuple(output.values())
        calls[-1]["outputs"] = tuple(o.clone() for o in outputs)  # LTX-2: video, audio
        calls[-1]["output"] = calls[-1]["outputs"][0]

    return transformer.register_forward_pre_hook(before, with_kwargs=True), after


def run_pipeline_with_stg(pipe, call: Callable, **stg) -> tuple[list[dict], torch.Tensor]:
    """Run `call` with `enable_stg(pipe, **stg)`, recording each call of each of the pipeline's
    transformers: its model, the kwargs the pipeline passed and the output it got back."""
    experts = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t]
    calls, hooks, posts = [], [], []
    try:
        for expert in experts:
            pre, after = _record(expert, calls)
            hooks.append(pre)
            posts.append((expert, after))
        with enable_stg(pipe, **stg):
            hooks += [e.register_forward_hook(a, with_kwargs=True) for e, a in posts]
            guided = call()
    finally:
        for hook in hooks:
            hook.remove()
    return calls, guided
