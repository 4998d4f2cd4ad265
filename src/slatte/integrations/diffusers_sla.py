"""SLA for the self-attention of diffusers video transformers (those of
`diffusers_common.SUPPORTED`; joint video + text attention: `diffusers_joint`).

`enable_sla(pipe.transformer, critical=0.05)` gives every block's self-attention module a
`sla` submodule (a `slatte.nn.SparseLinearAttention`, which owns the zero-initialised fp32
projection `proj_l`) and an attention processor that sends q, k, v in diffusers' (B, N, H, D)
layout straight to `slatte.ops.sparse_linear_attention(layout="bnhd")`. Cross-attention keeps
its processor (dense). The projections are ordinary parameters of the attention modules, so
they train with the model and `save_pretrained` writes them
(`blocks.{i}.attn1.sla.proj_l.weight`, ...). `disable_sla` puts the original processors back and
removes the projections.

Projections fine-tuned with the official SLA code / TurboDiffusion are loaded by block index:
see `load_sla_projections`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.sla import SparseLinearAttention
from ..ops.attention import SLA_POLICIES
from ..ops.sla import SLAConfig, sparse_linear_attention
from ..parallel.ring import hybrid_sla
from .diffusers_common import (
    SUPPORTED,
    ModelSpec,
    QKFunction,
    diffusers_version,
    head_dim,
    model_spec,
    resolve_transformer,
    resolve_transformers,
    self_attentions,
    set_processor,
)
from .diffusers_joint import JointSLAAttnProcessor

SLA_CONFIG_NAME = "slatte_sla.json"
SLA_BACKENDS = tuple(SLA_POLICIES)


# ---------------------------------------------------------------------------------------------
# q, k, v as diffusers computes them, in (B, N, H, D)
# ---------------------------------------------------------------------------------------------


def qkv_projections(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
        return attn.to_qkv(x).chunk(3, dim=-1)
    return attn.to_q(x), attn.to_k(x), attn.to_v(x)


def project_qkv(
    attn: nn.Module, x: torch.Tensor, qk: QKFunction, rotary: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N, C) → q, k, v (B, N, H, D): projections, then the model's qk norms and rotary
    embedding (`qk`, its `ModelSpec.qk`)."""
    q, k, v = qkv_projections(attn, x)  # each (B, N, H·D)
    q, k = qk(attn, q, k, rotary)
    return q, k, v.unflatten(2, (attn.heads, -1))


def output_projection(attn: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, N, H·D) → the attention module's output: per-head gates where the module has them
    (LTX-2's `to_gate_logits`, computed from the attention's input x (B, N, C)), then linear,
    then dropout."""
    gate_logits = getattr(attn, "to_gate_logits", None)
    if gate_logits is not None:
        # 2·sigmoid: zero logits give gates of one, as the model's processor has it.
        gates = 2.0 * torch.sigmoid(gate_logits(x))  # (B, N, H)
        out = (out.unflatten(2, (attn.heads, -1)) * gates[..., None]).flatten(2)
    return attn.to_out[1](attn.to_out[0](out))


# ---------------------------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------------------------


class SLAAttnProcessor:
    """Self-attention through SLA; remembers the processor it replaced so it can be restored.

    The call signature covers the models without joint attention: Wan, Wan-VACE, SkyReels-V2
    and LTX pass (attn, hidden_states, encoder_hidden_states, attention_mask, rotary)
    positionally, Latte's `Attention` passes `encoder_hidden_states` / `attention_mask` by name,
    LTX-2 adds a key rotary embedding (None in self-attention: the keys share the queries'
    positions) and, from its STG-capable processor, `perturbation_mask` / `all_perturbed`: rows
    whose mask is 0 get the identity attention map (V) as the model's processor gives them, so
    the model's own STG still works under SLA. LTX-2's per-head gates: `output_projection`.

    Context parallelism: `transformer.enable_parallelism(config=ContextParallelConfig(...))`
    sets `_parallel_config` on every processor that declares it, as on diffusers' own, and
    its hooks give each process its chunk of the sequence (and of the rotary tables). The
    processor then runs SLA over the whole sequence with `slatte.parallel.hybrid_sla` on the
    config's ring and Ulysses process groups: the same block map and output as one process
    (plain PyTorch per process, whatever `backend`).
    """

    _parallel_config: Any = None

    def __init__(self, qk: QKFunction, original: Any):
        self.qk = qk
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: Any = None,
        key_rotary_emb: Any = None,
        perturbation_mask: torch.Tensor | None = None,
        all_perturbed: bool | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if key_rotary_emb is not None and key_rotary_emb is not rotary_emb:
            raise ValueError(
                "SLAAttnProcessor serves self-attention, whose keys are rotated as its queries; "
                "it was called with a separate key rotary embedding"
            )
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "SLAAttnProcessor serves self-attention without a mask; it was called with "
                f"encoder_hidden_states={'a tensor' if encoder_hidden_states is not None else None}"
                f", attention_mask={'a tensor' if attention_mask is not None else None}"
            )
        if hidden_states.dim() != 3:
            raise ValueError(
                f"SLAAttnProcessor expects hidden_states (B, N, C), got {tuple(hidden_states.shape)}"
            )
        q, k, v = project_qkv(attn, hidden_states, self.qk, rotary_emb)  # (B, N, H, D)
        if all_perturbed is None:
            all_perturbed = perturbation_mask is not None and bool((perturbation_mask == 0).all())
        if all_perturbed:  # every row perturbed: no attention to compute
            return output_projection(attn, v.flatten(2), hidden_states)
        out = self._attention(attn.sla, q, k, v).flatten(2).type_as(hidden_states)  # (B, N, H·D)
        if perturbation_mask is not None:  # (B, 1, 1): 0 takes V, 1 the attention
            out = torch.lerp(v.flatten(2), out, perturbation_mask.to(out.dtype))
        return output_projection(attn, out, hidden_states)

    def _attention(
        self, sla: SparseLinearAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """SLA of q, k, v (B, N, H, D), over the whole sequence when it is sharded."""
        cp = getattr(self._parallel_config, "context_parallel_config", None)
        if cp is not None:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, n, D) views
            return hybrid_sla(
                q,
                k,
                v,
                sla.proj_l.weight,
                sla.proj_l.bias,
                sla.config,
                cp._ring_mesh.get_group(),
                cp._ulysses_mesh.get_group(),
            ).transpose(1, 2)  # (B, n, H, D)
        return sparse_linear_attention(
            q,
            k,
            v,
            sla.proj_l.weight,
            sla.proj_l.bias,
            sla.config,
            layout="bnhd",
            policy=SLA_POLICIES[sla.backend],
        )


# ---------------------------------------------------------------------------------------------
# Enable / disable
# ---------------------------------------------------------------------------------------------


def _check_plain_attention(attn: nn.Module, where: str) -> None:
    # Latte's generic `Attention` has options SLA's processor does not reproduce.
    unsupported = {
        "group_norm": None,
        "spatial_norm": None,
        "residual_connection": False,
        "rescale_output_factor": 1.0,
    }
    for name, default in unsupported.items():
        if hasattr(attn, name) and getattr(attn, name) != default:
            raise ValueError(
                f"{where}: attention option {name}={getattr(attn, name)!r} is not supported by "
                f"slatte's SLA processor (needs {default!r})"
            )


def enable_sla(
    model: Any,
    config: SLAConfig | None = None,
    *,
    backend: str = "sla",
    **options: Any,
) -> nn.Module:
    """Route every block's self-attention of a diffusers video transformer through SLA.

    Args:
        model: a transformer of a class in `SUPPORTED`, or a pipeline holding one as
            `.transformer` (and, for Wan2.2's two experts, `.transformer_2`: both get SLA).
        config: the SLA options; or give them as keywords (`critical=0.05, block_q=128, ...`,
            the fields of `SLAConfig`), not both.
        backend: "sla" (the fused Triton kernel on CUDA for bf16/fp16, the reference
            elsewhere) or "sla_reference" (plain PyTorch, any head dim).

    Layers that are already on SLA keep their trained projection and take the new options.
    Everything is checked before anything changes. Returns the (first) transformer.
    """
    if config is not None and options:
        raise ValueError(f"give either config or SLA options, not both (got {sorted(options)})")
    if config is not None and not isinstance(config, SLAConfig):
        raise ValueError(f"config must be an SLAConfig, got {type(config).__name__}")
    config = config if config is not None else SLAConfig.from_dict(options)
    if backend not in SLA_BACKENDS:
        raise ValueError(f"backend must be one of {SLA_BACKENDS}, got {backend!r}")
    transformers = resolve_transformers(model)
    for transformer in transformers:
        _check_sla_able(transformer)
    for transformer in transformers:
        spec = model_spec(transformer)
        param = next(transformer.parameters())
        for attn in self_attentions(transformer):
            previous = getattr(attn, "sla", None)
            sla = SparseLinearAttention(head_dim(attn), config, backend=backend).to(param.device)
            if isinstance(previous, SparseLinearAttention):
                sla.proj_l.load_state_dict(previous.proj_l.state_dict())
                original = attn.processor.original
            else:
                original = attn.processor
            attn.sla = sla
            processor = _sla_processor(spec, original)
            if isinstance(processor, SLAAttnProcessor):
                # Context parallelism enabled before SLA: keep running sharded.
                processor._parallel_config = getattr(attn.processor, "_parallel_config", None)
            set_processor(attn, processor)
    return transformers[0]


def _check_sla_able(transformer: nn.Module) -> None:
    # Any head dim runs: where the fused kernels do not serve it, the op's launch policy takes
    # the block-sparse PyTorch family (`ops/sla/launch_policy.select_kernels`).
    spec = model_spec(transformer)
    name = type(transformer).__name__
    attentions = self_attentions(transformer)
    for i, attn in enumerate(attentions):
        _check_plain_attention(attn, f"{name} block {i}")
        _check_own_processor(attn, spec, f"{name} block {i}")


def _sla_processor(spec: ModelSpec, original: Any) -> SLAAttnProcessor | JointSLAAttnProcessor:
    if spec.joint is not None:
        return JointSLAAttnProcessor(spec.joint, original)
    return SLAAttnProcessor(spec.qk, original)


def _check_own_processor(attn: nn.Module, spec: ModelSpec, where: str) -> None:
    """Refuse a processor someone else installed: wrapping it would silently drop its work."""
    processor = attn.processor
    if isinstance(processor, (SLAAttnProcessor, JointSLAAttnProcessor)):
        return
    if type(processor).__name__ not in spec.processors:
        raise ValueError(
            f"{where}: its self-attention processor is {type(processor).__name__}, not the "
            f"model's own ({', '.join(spec.processors)}); slatte does not wrap a processor "
            "that something else installed (restore the model's processor first)"
        )


def disable_sla(model: Any) -> nn.Module:
    """Restore the processors `enable_sla` replaced and drop the SLA projections (of every
    transformer of a pipeline). Returns the (first) transformer."""
    transformers = resolve_transformers(model)
    for transformer in transformers:
        for attn in self_attentions(transformer):
            if isinstance(attn.processor, (SLAAttnProcessor, JointSLAAttnProcessor)):
                original = attn.processor.original
                # Context parallelism enabled after SLA reached only the SLA processor.
                parallel = getattr(attn.processor, "_parallel_config", None)
                if parallel is not None and hasattr(original, "_parallel_config"):
                    original._parallel_config = parallel
                set_processor(attn, original)
            if hasattr(attn, "sla"):
                del attn.sla
    return transformers[0]


def sla_config_of(model: Any) -> SLAConfig | None:
    """The SLA options of an SLA-enabled transformer, or None when SLA is off."""
    attentions = self_attentions(resolve_transformer(model))
    slas = [a.sla for a in attentions if isinstance(getattr(a, "sla", None), SparseLinearAttention)]
    return slas[0].config if slas else None


# ---------------------------------------------------------------------------------------------
# Projections: load from slatte / official checkpoints, save and reload with the model
# ---------------------------------------------------------------------------------------------

# `<anything>.<index>.<anything>proj_l.weight|bias`, where <index> follows a block-list name (of
# a supported model, or `layers`).
_BLOCK_LISTS = sorted(
    {name for spec in SUPPORTED.values() for name in (*spec.block_lists, *spec.side_block_lists)}
)
_OFFICIAL_KEY = re.compile(
    rf"(?:^|\.)(?P<list>{'|'.join([*_BLOCK_LISTS, 'layers'])})\."
    r"(?P<index>\d+)\.(?:.*\.)?proj_l\.(?P<param>weight|bias)$"
)


def load_sla_projections(
    model: Any, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> list[int]:
    """Load SLA projections into an SLA-enabled transformer; returns the block indices loaded.

    Keys are matched by block index, so any naming that puts the index of the block after its
    block list and ends in `proj_l.weight` / `proj_l.bias` works:
    - slatte / diffusers: `blocks.{i}.attn1.sla.proj_l.weight` (Wan),
      `transformer_blocks.{i}.attn1.sla.proj_l.weight` (LTX, Latte spatial),
      `temporal_transformer_blocks.{i}.attn1.sla.proj_l.weight` (Latte temporal);
    - official SLA / TurboDiffusion Wan checkpoints (original Wan module names):
      `blocks.{i}.self_attn.<...>.proj_l.weight` → block i's `attn1.sla.proj_l.weight`. Those
      were trained with linear attention over all blocks: enable SLA with
      `linear_scope="all"` (and the official Wan2.1 blocks `block_q=128, block_k=64`).
    Latte's block order is all spatial blocks, then all temporal ones. With `strict`, every
    block must receive both tensors.
    """
    transformer = resolve_transformer(model)
    spec = model_spec(transformer)
    attentions = self_attentions(transformer)
    if not all(isinstance(getattr(a, "sla", None), SparseLinearAttention) for a in attentions):
        raise ValueError("load_sla_projections needs SLA enabled first (enable_sla(model, ...))")
    offsets, total = {}, 0
    for attr in (*spec.block_lists, *spec.side_block_lists):
        offsets[attr] = total
        total += len(getattr(transformer, attr))
    offsets["layers"] = 0
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _OFFICIAL_KEY.search(key)
        if match is None:
            continue
        block_list = match["list"]
        if block_list not in offsets:
            block_list = spec.block_lists[0]
        index = offsets[block_list] + int(match["index"])
        if index >= len(attentions):
            raise ValueError(
                f"{key}: block index {match['index']} out of range for "
                f"{type(transformer).__name__} with {len(attentions)} blocks"
            )
        if match["param"] in found.setdefault(index, {}):
            raise ValueError(f"two projections in the state dict map to block {index} ({key})")
        found[index][match["param"]] = value
    if strict:
        incomplete = [i for i in range(len(attentions)) if len(found.get(i, {})) != 2]
        if incomplete:
            raise ValueError(
                f"no proj_l.weight / proj_l.bias for block(s) {incomplete} in the state dict "
                f"({len(state_dict)} keys); pass strict=False to load a subset"
            )
    for index, tensors in sorted(found.items()):
        attentions[index].sla.load_official_state_dict(
            {f"proj_l.{k}": v for k, v in tensors.items()}
        )
    return sorted(found)


def save_pretrained_sla(model: Any, directory: str | Path, **kwargs: Any) -> None:
    """`save_pretrained` plus `slatte_sla.json` (the SLA options), so that
    `from_pretrained_sla` rebuilds the SLA-enabled model."""
    transformer = resolve_transformer(model)
    config = sla_config_of(transformer)
    if config is None:
        raise ValueError("save_pretrained_sla needs an SLA-enabled transformer")
    backend = self_attentions(transformer)[0].sla.backend
    transformer.save_pretrained(directory, **kwargs)
    payload = {"sla": config.to_dict(), "backend": backend}
    (Path(directory) / SLA_CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")


def _weights_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def from_pretrained_sla(directory: str | Path, **kwargs: Any) -> nn.Module:
    """Load a diffusers transformer saved by `save_pretrained_sla` (or any local diffusers
    transformer directory) and, when it has `slatte_sla.json`, re-enable SLA with the saved
    options and projections. `kwargs` go to `from_pretrained` (e.g. `torch_dtype`)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{directory} is not a diffusers model directory (no config.json found)"
        )
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in SUPPORTED:
        raise ValueError(
            f"{config_file} names class {class_name!r}; slatte supports {sorted(SUPPORTED)}"
        )
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ImportError(f"diffusers {diffusers_version()} has no class {class_name}")
    sla_file = directory / SLA_CONFIG_NAME
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    if sla_file.is_file():
        # diffusers would warn that the projections are unused: they are loaded below.
        diffusers_logging.set_verbosity_error()
    try:
        transformer = cls.from_pretrained(directory, **kwargs)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if sla_file.is_file():
        payload = json.loads(sla_file.read_text())
        enable_sla(
            transformer, SLAConfig.from_dict(payload["sla"]), backend=payload.get("backend", "sla")
        )
        load_sla_projections(transformer, _weights_state_dict(directory))
    return transformer


__all__ = [
    "SLAAttnProcessor",
    "disable_sla",
    "enable_sla",
    "from_pretrained_sla",
    "load_sla_projections",
    "save_pretrained_sla",
    "sla_config_of",
]
