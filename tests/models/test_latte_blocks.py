"""Blocks and perturbations against an independent, loop-by-loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testing import PIXART, tiny_inputs, tiny_model

from slatte.guidance.strategies import STRATEGIES


def token_groups(kind: str, frames: int, patches: int) -> list[list[int]]:
    """Which flattened tokens (index f·S + s) attend to each other in a block of `kind`."""
    if kind == "spatial":
        return [[f * patches + s for s in range(patches)] for f in range(frames)]
    if kind == "temporal":
        return [[f * patches + s for f in range(frames)] for s in range(patches)]
    return [list(range(frames * patches))]


def reference_attention(attn, x: torch.Tensor, identity_map: bool) -> torch.Tensor:
    """Multi-head softmax attention of one group of tokens x (N, D), written out by hand."""
    d, heads = x.shape[-1], attn.num_heads
    wq, wk, wv = attn.qkv.weight.split(d)
    bq, bk, bv = attn.qkv.bias.split(d)
    v = x @ wv.T + bv
    if identity_map:
        out = v
    else:
        q = (x @ wq.T + bq).view(-1, heads, d // heads).transpose(0, 1)  # (H, N, Dh)
        k = (x @ wk.T + bk).view(-1, heads, d // heads).transpose(0, 1)
        vh = v.view(-1, heads, d // heads).transpose(0, 1)
        p = torch.softmax(q @ k.transpose(1, 2) / (d // heads) ** 0.5, dim=-1)
        out = (p @ vh).transpose(0, 1).reshape(-1, d)
    return out @ attn.proj.weight.T + attn.proj.bias


def reference_cross(block, h: torch.Tensor, text: torch.Tensor, mask: torch.Tensor):
    """h (N, D) of one sample against its text (L, D) with mask (L,)."""
    ca, d = block.cross_attn, h.shape[-1]
    if not mask.any():
        return torch.zeros_like(h)
    x = h  # PixArt-style: the raw hidden states
    if block.norm_cross is not None:
        x = F.layer_norm(h, (d,), block.norm_cross.weight, block.norm_cross.bias, eps=1e-6)
    heads, dh = ca.num_heads, d // ca.num_heads
    q = (x @ ca.q.weight.T + ca.q.bias).view(-1, heads, dh).transpose(0, 1)
    kv = text[mask] @ ca.kv.weight.T + ca.kv.bias
    k, v = (z.reshape(-1, heads, dh).transpose(0, 1) for z in kv.split(d, dim=-1))
    p = torch.softmax(q @ k.transpose(1, 2) / dh**0.5, dim=-1)
    out = (p @ v).transpose(0, 1).reshape(-1, d)
    return out @ ca.proj.weight.T + ca.proj.bias


def reference_block(block, h, ctx, perturbation, shared=None):
    """`shared`: the model's shared modulation linear, for blocks with a modulation table."""
    if perturbation == "transformer_block":
        return h
    b, f, s, d = h.shape
    out = h.reshape(b, f * s, d).clone()
    if block.scale_shift_table is None:
        linear = block.adaLN_modulation[1]
        mod = F.silu(ctx.c) @ linear.weight.T + linear.bias
    else:  # the shared modulation, computed from c, plus the block's own (6, D) table
        mod = F.silu(ctx.c) @ shared.weight.T + shared.bias + block.scale_shift_table.flatten()
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # each (B, D)
    for i in range(b):
        tokens = out[i]
        if perturbation != "attention_block":
            x = F.layer_norm(tokens, (d,), eps=1e-6) * (1 + scale1[i]) + shift1[i]
            attn_out = torch.zeros_like(x)
            for group in token_groups(block.kind, f, s):
                if perturbation == "attention_skip":
                    attn_out[group] = x[group]
                else:
                    attn_out[group] = reference_attention(
                        block.attn, x[group], perturbation == "attention_values"
                    )
            tokens = tokens + gate1[i] * attn_out
        if block.cross_attn is not None:
            tokens = tokens + reference_cross(block, tokens, ctx.text[i], ctx.text_mask[i])
        x = F.layer_norm(tokens, (d,), eps=1e-6) * (1 + scale2[i]) + shift2[i]
        mlp = block.mlp
        x = F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias, approximate="tanh")
        tokens = tokens + gate2[i] * (x @ mlp.fc2.weight.T + mlp.fc2.bias)
        out[i] = tokens
    return out.reshape(b, f, s, d)


@pytest.mark.parametrize("pattern", ["alternating", "full"])
@pytest.mark.parametrize("text_dim", [None, 12])
@pytest.mark.parametrize("perturbation", [None, *STRATEGIES])
def test_block_matches_reference(pattern, text_dim, perturbation):
    model = tiny_model(block_pattern=pattern, text_dim=text_dim)
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        h, ctx = model.embed(x, t, y, **kw)
        for block in model.blocks:
            got = block(h, ctx, STRATEGIES.get(perturbation))
            want = reference_block(block, h, ctx, perturbation)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            h = want


@pytest.mark.parametrize("pattern", ["alternating", "full"])
@pytest.mark.parametrize("perturbation", [None, "attention_skip"])
def test_pixart_block_options_match_reference(pattern, perturbation):
    """Un-normalised cross-attention input and shared modulation + per-block tables."""
    model = tiny_model(block_pattern=pattern, text_dim=12, **PIXART)
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        h, ctx = model.embed(x, t, y, **kw)
        for block in model.blocks:
            assert block.adaLN_modulation is None and block.norm_cross is None
            got = block(h, ctx, STRATEGIES.get(perturbation))
            want = reference_block(block, h, ctx, perturbation, model.shared_modulation[1])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            h = want


@pytest.mark.parametrize("pattern", ["alternating", "full"])
@pytest.mark.parametrize("perturbation", STRATEGIES)
def test_every_perturbation_changes_every_block_and_row(pattern, perturbation):
    model = tiny_model(block_pattern=pattern, text_dim=12)
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        clean = model(x, t, y, **kw)
        for index in range(len(model.blocks)):
            perturbed = model(x, t, y, **kw, perturbations={index: STRATEGIES[perturbation]})
            # Every row of the batch is perturbed, not just one.
            per_row = (perturbed - clean).abs().flatten(1).amax(dim=1)
            assert (per_row > 1e-3).all(), (index, per_row)
        # Nothing outlives the call.
        torch.testing.assert_close(model(x, t, y, **kw), clean, rtol=0, atol=0)


@pytest.mark.parametrize("pattern,index", [("alternating", 0), ("alternating", 3), ("full", 1)])
def test_transformer_block_equals_deleting_the_block(pattern, index):
    model = tiny_model(block_pattern=pattern, depth=4)
    x, t, y, _ = tiny_inputs(model.config)
    with torch.no_grad():
        perturbed = model(x, t, y, perturbations={index: STRATEGIES["transformer_block"]})
        del model.blocks[index]
        torch.testing.assert_close(model(x, t, y), perturbed, atol=1e-6, rtol=1e-6)


def test_bad_perturbations_are_rejected():
    model = tiny_model()
    x, t, y, _ = tiny_inputs(model.config)
    with pytest.raises(ValueError, match="must be an STG strategy .*got 'transformer_block'"):
        model(x, t, y, perturbations={0: "transformer_block"})
    with pytest.raises(ValueError, match=r"index 2 out of range \[0, 2\)"):
        model(x, t, y, perturbations={2: STRATEGIES["transformer_block"]})
    with pytest.raises(ValueError, match="must be an STG strategy .*got 'skip'"):
        model.blocks[0](*model.embed(x, t, y), "skip")
