"""What slatte needs to know about the diffusers video transformers it plugs into.

One table, `SUPPORTED`, holds a `ModelSpec` per transformer class: where its blocks live and in
which order the forward runs them, its self-attention submodule and how that attention
normalises and rotates q and k, which forward arguments are per-sample, how its pipeline lays
out classifier-free guidance, and whether its output carries a learned variance. Everything in
`slatte.integrations` reads the table and nothing else asks which class a model is, so
supporting a transformer is one entry here, plus, where its attention differs, one small `qk`
function in `diffusers_qk`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .diffusers_joint import COGVIDEOX, HUNYUAN_VIDEO, HUNYUAN_VIDEO_15, MOCHI, JointAttention
from .diffusers_qk import ltx2_qk, ltx_qk, no_rotary_qk, wan_qk

# Tested with 0.42; Wan's (cos, sin) rotary tables and the processor signatures used here exist
# from 0.36 on (older layouts get a clear error where they differ).
MIN_DIFFUSERS = (0, 36)

QKFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class ModelSpec:
    """What slatte needs to know about one diffusers transformer class.

    - `block_lists`: attribute names of the ModuleLists holding the transformer blocks;
    - `side_block_lists`: ModuleLists of blocks that run beside those (Wan-VACE's control
      blocks): their self-attention gets SLA, but STG neither counts nor perturbs them;
    - `qk`: `qk(attn, q, k, rotary) -> q, k` (B, N, H, D) from the projections (B, N, H·D):
      the attention's qk norms and rotary embedding as the model applies them (`diffusers_qk`);
      None for a joint attention, which `joint` describes instead;
    - `processors`: the class names of the self-attention processors the model comes with: the
      only ones SLA replaces (any other was put there by someone else and is refused);
    - `sample_inputs`: the transformer forward's per-sample arguments (batch first): what STG
      gives the perturbed rows; every other argument is shared by the whole batch;
    - `fork_inputs`: the block forward's per-sample arguments, which the blocks before the first
      perturbed one see for the original rows only; None when a block's batch folds frames or
      patches into it (Latte: B·F or B·S rows), so the perturbed branch runs every block;
    - `block_streams`: the block forward's arguments that it returns, updated, in the same
      order (two-stream blocks: video and text, or LTX-2's video and audio); STG's skipped
      block returns them as they came;
    - `side_self_attentions`: further self-attention submodules of a block that SLA leaves
      dense but STG's attention strategies perturb with `self_attention` (LTX-2's audio
      self-attention, which the model's own STG perturbs too);
    - `side_outputs`: the forward's per-sample outputs after `sample`, each with the pipeline
      attribute (a dotted path) holding its CFG scale (LTX-2's audio, `audio_guidance_scale`):
      STG trims them to the caller's batch and guides them as `sample`;
    - `own_guidance_inputs`: forward arguments that, when set, mark a call as one of the
      pipeline's own extra guidance passes (LTX-2's STG and modality-isolation passes), which
      slatte's STG cannot tell apart from the CFG calls it guides: such a call is refused;
    - `joint`: video and text tokens share one attention (`diffusers_joint`): where its q, k, v
      and outputs come from; SLA then serves the video-to-video part only;
    - `batched_cfg`: the pipeline runs classifier-free guidance as one batch [uncond; cond]
      (True) or as separate calls, conditional first (False);
    - `cfg_scale`: the pipeline attribute (a dotted path) holding its CFG scale (CFG is on where the pipeline's
      `do_classifier_free_guidance` says so, or, without one, where the scale exceeds 1); None
      where the pipeline's guidance is not CFG that slatte can read (HunyuanVideo: its
      `guidance_scale` is embedded, distilled guidance): every call is then conditional;
    - `self_attention`: the block's self-attention submodule;
    - `interleaved`: the forward runs the lists' blocks in turn (Latte: spatial 0, temporal 0,
      spatial 1, ...) instead of one list after the other; STG block indices follow that order;
    - `learned_sigma`: with out_channels = 2 · in_channels, the output is (mean; variance)
      along dim 1, and only the mean is guided;
    - `flow_finetune`: `slatte finetune`'s loop can train it (called as Wan: latents
      (B, C, F, H, W), timestep, encoder_hidden_states; predicts the flow-matching velocity).
    """

    block_lists: tuple[str, ...]
    qk: QKFunction | None
    processors: tuple[str, ...]
    sample_inputs: tuple[str, ...]
    fork_inputs: tuple[str, ...] | None
    batched_cfg: bool
    self_attention: str = "attn1"
    cfg_scale: str | None = "guidance_scale"
    block_streams: tuple[str, ...] = ("hidden_states",)
    side_self_attentions: tuple[str, ...] = ()
    side_outputs: tuple[tuple[str, str], ...] = ()
    own_guidance_inputs: tuple[str, ...] = ()
    joint: JointAttention | None = None
    side_block_lists: tuple[str, ...] = ()
    interleaved: bool = False
    learned_sigma: bool = False
    flow_finetune: bool = False


_WAN_SAMPLE_INPUTS = (
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_hidden_states_image",
)

SUPPORTED: dict[str, ModelSpec] = {
    "WanTransformer3DModel": ModelSpec(
        block_lists=("blocks",),
        qk=wan_qk,
        processors=("WanAttnProcessor",),
        sample_inputs=_WAN_SAMPLE_INPUTS,
        fork_inputs=("hidden_states", "encoder_hidden_states", "temb"),
        batched_cfg=False,
        flow_finetune=True,
    ),
    "WanVACETransformer3DModel": ModelSpec(
        block_lists=("blocks",),
        qk=wan_qk,
        processors=("WanAttnProcessor",),
        # Not `control_hidden_states_scale`: one entry per VACE layer, shared by the batch.
        sample_inputs=(*_WAN_SAMPLE_INPUTS, "control_hidden_states"),
        # The control blocks' hints join the main stream after some blocks, so the perturbed
        # rows run every block.
        fork_inputs=None,
        batched_cfg=False,
        side_block_lists=("vace_blocks",),
    ),
    "SkyReelsV2Transformer3DModel": ModelSpec(
        block_lists=("blocks",),
        qk=wan_qk,
        processors=("SkyReelsV2AttnProcessor",),
        sample_inputs=_WAN_SAMPLE_INPUTS,
        fork_inputs=("hidden_states", "encoder_hidden_states", "temb"),
        batched_cfg=False,
    ),
    "LTXVideoTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks",),
        qk=ltx_qk,
        processors=("LTXVideoAttnProcessor",),
        sample_inputs=(
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "encoder_attention_mask",
            "video_coords",
        ),
        fork_inputs=(
            "hidden_states",
            "encoder_hidden_states",
            "temb",
            "image_rotary_emb",
            "encoder_attention_mask",
        ),
        batched_cfg=True,
    ),
    "LTX2VideoTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks",),
        qk=ltx2_qk,
        # The second is the processor of models built with `perturbed_attn` (the model's STG).
        processors=("LTX2AudioVideoAttnProcessor", "LTX2PerturbedAttnProcessor"),
        sample_inputs=(
            "hidden_states",
            "audio_hidden_states",
            "encoder_hidden_states",
            "audio_encoder_hidden_states",
            "timestep",
            "audio_timestep",
            "sigma",
            "audio_sigma",
            "encoder_attention_mask",
            "audio_encoder_attention_mask",
            "video_coords",
            "audio_coords",
            "perturbation_mask",
            "video_self_attention_mask",
            "video_keyframes_mask",
        ),
        fork_inputs=(
            "hidden_states",
            "audio_hidden_states",
            "encoder_hidden_states",
            "audio_encoder_hidden_states",
            "temb",
            "temb_audio",
            "temb_ca_scale_shift",
            "temb_ca_audio_scale_shift",
            "temb_ca_gate",
            "temb_ca_audio_gate",
            "temb_prompt",
            "temb_prompt_audio",
            "video_rotary_emb",
            "audio_rotary_emb",
            "ca_video_rotary_emb",
            "ca_audio_rotary_emb",
            "encoder_attention_mask",
            "audio_encoder_attention_mask",
            "self_attention_mask",
            "perturbation_mask",
        ),
        batched_cfg=True,
        block_streams=("hidden_states", "audio_hidden_states"),
        side_self_attentions=("audio_attn1",),
        side_outputs=(("audio_sample", "audio_guidance_scale"),),
        own_guidance_inputs=("spatio_temporal_guidance_blocks", "isolate_modalities"),
    ),
    "LatteTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks", "temporal_transformer_blocks"),
        qk=no_rotary_qk,
        processors=("AttnProcessor2_0",),
        sample_inputs=(
            "hidden_states",
            "timestep",
            "encoder_hidden_states",
            "encoder_attention_mask",
        ),
        fork_inputs=None,
        batched_cfg=True,
        interleaved=True,
        learned_sigma=True,
    ),
    "HunyuanVideoTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        qk=None,
        processors=("HunyuanVideoAttnProcessor2_0",),
        sample_inputs=(
            "hidden_states",
            "timestep",
            "encoder_hidden_states",
            "encoder_attention_mask",
            "pooled_projections",
            "guidance",
        ),
        fork_inputs=(
            "hidden_states",
            "encoder_hidden_states",
            "temb",
            "attention_mask",
            "token_replace_emb",
        ),
        # Guidance is distilled into the model; its pipeline's optional true CFG
        # (`true_cfg_scale`) lives in a local variable, out of slatte's sight.
        batched_cfg=False,
        self_attention="attn",
        cfg_scale=None,
        block_streams=("hidden_states", "encoder_hidden_states"),
        joint=HUNYUAN_VIDEO,
    ),
    "HunyuanVideo15Transformer3DModel": ModelSpec(
        block_lists=("transformer_blocks",),
        qk=None,
        processors=("HunyuanVideo15AttnProcessor2_0",),
        sample_inputs=(
            "hidden_states",
            "timestep",
            "encoder_hidden_states",
            "encoder_attention_mask",
            "timestep_r",
            "encoder_hidden_states_2",
            "encoder_attention_mask_2",
            "image_embeds",
        ),
        fork_inputs=("hidden_states", "encoder_hidden_states", "temb", "attention_mask"),
        # Its pipeline's guider (ClassifierFreeGuidance) calls the conditional batch first.
        batched_cfg=False,
        self_attention="attn",
        cfg_scale="guider.guidance_scale",
        block_streams=("hidden_states", "encoder_hidden_states"),
        joint=HUNYUAN_VIDEO_15,
    ),
    "MochiTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks",),
        qk=None,
        processors=("MochiAttnProcessor2_0",),
        sample_inputs=(
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "encoder_attention_mask",
        ),
        fork_inputs=("hidden_states", "encoder_hidden_states", "temb", "encoder_attention_mask"),
        batched_cfg=True,
        block_streams=("hidden_states", "encoder_hidden_states"),
        joint=MOCHI,
    ),
    "CogVideoXTransformer3DModel": ModelSpec(
        block_lists=("transformer_blocks",),
        qk=None,
        processors=("CogVideoXAttnProcessor2_0",),
        sample_inputs=("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond"),
        fork_inputs=("hidden_states", "encoder_hidden_states", "temb"),
        batched_cfg=True,
        block_streams=("hidden_states", "encoder_hidden_states"),
        joint=COGVIDEOX,
    ),
}


def diffusers_version() -> str:
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "slatte's diffusers integration needs diffusers (pip install 'diffusers>=0.36')"
        ) from exc
    return diffusers.__version__


def check_diffusers_version() -> None:
    version = diffusers_version()
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_DIFFUSERS:
        raise ImportError(
            f"slatte's diffusers integration needs diffusers >= "
            f"{'.'.join(map(str, MIN_DIFFUSERS))} (attention processors with the (B, N, H, D) "
            f"layout), found {version}"
        )


def resolve_transformer(model: Any) -> nn.Module:
    """The transformer of a pipeline (its `.transformer`), or `model` itself."""
    transformer = getattr(model, "transformer", model)
    if not isinstance(transformer, nn.Module):
        raise ValueError(
            f"expected a diffusers pipeline or transformer model, got {type(model).__name__}"
        )
    return transformer


def resolve_transformers(model: Any) -> list[nn.Module]:
    """Every transformer of a pipeline: `.transformer`, and `.transformer_2` where it has one
    (Wan2.2's low-noise expert); or `model` itself."""
    second = getattr(model, "transformer_2", None)
    return [resolve_transformer(model), *([second] if second is not None else [])]


def model_spec(transformer: nn.Module) -> ModelSpec:
    """The entry of `SUPPORTED` for `transformer`, or a ValueError naming what is supported."""
    check_diffusers_version()
    name = type(transformer).__name__
    if name not in SUPPORTED:
        raise ValueError(
            f"unsupported transformer class {name}; slatte supports {sorted(SUPPORTED)}"
        )
    return SUPPORTED[name]


def blocks_of(transformer: nn.Module) -> list[nn.Module]:
    """All transformer blocks, one block list after the other, the side block lists last (the
    SLA projections' order)."""
    spec = model_spec(transformer)
    lists = (*spec.block_lists, *spec.side_block_lists)
    return [blk for stack in _block_stacks(transformer, lists) for blk in stack]


def execution_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer blocks in the order the forward runs them (STG block indices)."""
    spec = model_spec(transformer)
    stacks = _block_stacks(transformer, spec.block_lists)
    if spec.interleaved:
        return [blk for group in zip(*stacks, strict=True) for blk in group]
    return [blk for stack in stacks for blk in stack]


def _block_stacks(transformer: nn.Module, lists: tuple[str, ...]) -> list[nn.ModuleList]:
    stacks = []
    for attr in lists:
        stack = getattr(transformer, attr, None)
        if not isinstance(stack, nn.ModuleList):
            raise ValueError(
                f"{type(transformer).__name__} has no ModuleList {attr!r}: this diffusers "
                f"version ({diffusers_version()}) lays the model out differently than slatte "
                "expects"
            )
        stacks.append(stack)
    return stacks


def self_attentions(transformer: nn.Module) -> list[nn.Module]:
    """The self-attention module of every block, checked to have what slatte's processors use."""
    spec = model_spec(transformer)
    # A joint attention's output projections are its `JointAttention`'s business.
    # `processor`, not `set_processor`: MochiAttention has only the attribute (see set_processor).
    needed = ("to_q", "to_k", "to_v", "heads", "processor")
    needed += () if spec.joint is not None else ("to_out",)
    modules = []
    for i, block in enumerate(blocks_of(transformer)):
        attn = getattr(block, spec.self_attention, None)
        missing = [a for a in needed if not hasattr(attn, a)]
        if attn is None or missing:
            raise ValueError(
                f"block {i} of {type(transformer).__name__} has no diffusers attention module "
                f"{spec.self_attention!r} with {missing or 'the expected attributes'} "
                f"(diffusers {diffusers_version()})"
            )
        modules.append(attn)
    return modules


def set_processor(attn: nn.Module, processor: Any) -> None:
    """Install `processor` on a diffusers attention module; `MochiAttention` has no
    `set_processor`, only the `processor` attribute its forward calls."""
    if hasattr(attn, "set_processor"):
        attn.set_processor(processor)
    else:
        attn.processor = processor


def head_dim(attn: nn.Module) -> int:
    return attn.to_q.out_features // attn.heads
