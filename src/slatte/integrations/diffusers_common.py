"""What slatte needs to know about the diffusers video transformers it plugs into.

One table, `SUPPORTED`, says for each transformer class where its blocks live, which submodule of
a block is the self-attention, and how that attention applies rotary embeddings. Everything else
in `slatte.integrations` reads it, so adding a model is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Tested with 0.42; Wan's (cos, sin) rotary tables and the processor signatures used here exist
# from 0.36 on (older layouts get a clear error where they differ).
MIN_DIFFUSERS = (0, 36)


@dataclass(frozen=True)
class ModelSpec:
    """`block_lists`: attribute names of the ModuleLists holding the transformer blocks, in the
    order block indices count them; `self_attention`: the block's self-attention submodule;
    `rotary`: how the attention rotates q and k ("wan": interleaved pairs, tables (1, N, 1, D);
    "ltx": diffusers' LTX `apply_rotary_emb` on (B, N, H·D); None: no rotary embedding);
    `samples_share_block_batch`: True when the blocks see one row per sample (batch B), False
    when a block's batch folds frames or patches into it (Latte: B·F or B·S rows)."""

    block_lists: tuple[str, ...]
    self_attention: str
    rotary: str | None
    samples_share_block_batch: bool


SUPPORTED: dict[str, ModelSpec] = {
    "WanTransformer3DModel": ModelSpec(("blocks",), "attn1", "wan", True),
    "LTXVideoTransformer3DModel": ModelSpec(("transformer_blocks",), "attn1", "ltx", True),
    "LatteTransformer3DModel": ModelSpec(
        ("transformer_blocks", "temporal_transformer_blocks"), "attn1", None, False
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
    """All transformer blocks, in the order of the spec's block lists (block index order)."""
    spec = model_spec(transformer)
    blocks: list[nn.Module] = []
    for attr in spec.block_lists:
        stack = getattr(transformer, attr, None)
        if not isinstance(stack, nn.ModuleList):
            raise ValueError(
                f"{type(transformer).__name__} has no ModuleList {attr!r}: this diffusers "
                f"version ({diffusers_version()}) lays the model out differently than slatte "
                "expects"
            )
        blocks.extend(stack)
    return blocks


def self_attentions(transformer: nn.Module) -> list[nn.Module]:
    """The self-attention module of every block, checked to have what slatte's processors use."""
    spec = model_spec(transformer)
    modules = []
    for i, block in enumerate(blocks_of(transformer)):
        attn = getattr(block, spec.self_attention, None)
        missing = [
            a for a in ("to_q", "to_k", "to_v", "to_out", "heads", "set_processor") if not
            hasattr(attn, a)
        ]  # fmt: skip
        if attn is None or missing:
            raise ValueError(
                f"block {i} of {type(transformer).__name__} has no diffusers attention module "
                f"{spec.self_attention!r} with {missing or 'the expected attributes'} "
                f"(diffusers {diffusers_version()})"
            )
        modules.append(attn)
    return modules


def head_dim(attn: nn.Module) -> int:
    return attn.to_q.out_features // attn.heads
