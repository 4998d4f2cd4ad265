"""nn layers against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slatte.nn import (
    Attention,
    CrossAttention,
    FP32LayerNorm,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    sincos_1d,
    sincos_2d,
)


def test_sincos_tables_follow_the_mae_convention():
    dim, rows, cols = 16, 3, 5
    table = sincos_2d(dim, rows, cols)  # (rows·cols, dim)
    assert table.shape == (15, 16)
    for r in range(rows):
        for c in range(cols):
            token = table[r * cols + c]
            for i in range(dim // 4):
                omega = 10000 ** (-i / (dim // 4))
                # First half encodes the column, second half the row; each half [sin | cos].
                assert token[i].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
                assert token[dim // 4 + i].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
                assert token[dim // 2 + i].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
    torch.testing.assert_close(sincos_1d(8, torch.arange(4))[:, :4], sincos_2d(16, 1, 4)[:, :4])
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(6, 2, 2)


def test_patch_embed_equals_a_strided_convolution():
    torch.manual_seed(0)
    embed = PatchEmbed(3, 8, 2)
    x = torch.randn(2, 3, 6, 4)
    weight = embed.proj.weight.view(8, 2, 2, 3).permute(0, 3, 1, 2)  # (D, C, p, q)
    conv = F.conv2d(x, weight, embed.proj.bias, stride=2)  # (N, D, H/p, W/p)
    torch.testing.assert_close(embed(x), conv.flatten(2).transpose(1, 2))


def test_timestep_embedding_is_fp32_even_in_a_bf16_model():
    torch.manual_seed(0)
    emb = TimestepEmbedder(32)
    t = torch.tensor([0.0, 17.0, 999.0])
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    sinusoid = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb.sinusoid(t), sinusoid)
    emb.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb(t.long())
    assert out.dtype == torch.float32
    ref = emb.mlp.float()(sinusoid)  # the same (bf16-rounded) weights, in fp32
    torch.testing.assert_close(out, ref)


def test_label_dropout_rate_and_null_class():
    torch.manual_seed(0)
    emb = LabelEmbedder(10, 8, dropout_prob=0.3)
    y = torch.randint(0, 10, (20000,))
    dropped = emb.drop_labels(y)
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.3) < 0.02
    assert torch.equal(dropped[dropped != 10], y[dropped != 10])
    emb.train()
    out = emb(y[:500])
    is_null = (out == emb.embedding_table.weight[10]).all(dim=1)
    assert 0.15 < is_null.float().mean() < 0.45
    emb.eval()
    torch.testing.assert_close(emb(y[:500]), emb.embedding_table.weight[y[:500]])


def test_fp32_layer_norm_under_bf16():
    norm = FP32LayerNorm(64, eps=1e-6)
    x = (torch.randn(4, 64) * 100 + 1000).bfloat16()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.layer_norm(x.float(), (64,), eps=1e-6).bfloat16())


def manual_attention(x, attn, qk_norm=False):
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (z.view(b, n, h, d // h).transpose(1, 2) for z in attn.qkv(x).split(d, dim=-1))
    if qk_norm:
        q = F.layer_norm(q, (d // h,), attn.q_norm.weight, attn.q_norm.bias, eps=1e-6)
        k = F.layer_norm(k, (d // h,), attn.k_norm.weight, attn.k_norm.bias, eps=1e-6)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    return attn.proj((p @ v).transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_manual_softmax(qk_norm):
    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=qk_norm)
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.normal_()
            attn.k_norm.bias.normal_()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), manual_attention(x, attn, qk_norm), atol=1e-5, rtol=1e-5)
    v = x @ attn.qkv.weight[64:].T + attn.qkv.bias[64:]
    torch.testing.assert_close(attn.identity_map(x), attn.proj(v))


def test_cross_attention_masks_padding_and_empty_rows():
    torch.manual_seed(0)
    ca = CrossAttention(16, 12, 2)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    out = ca(x, ctx, mask)
    # Row 0 equals attending to its two real tokens only; row 2 (no tokens) is exactly zero.
    torch.testing.assert_close(out[:1], ca(x[:1], ctx[:1, :2]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1:2], ca(x[1:2], ctx[1:2]), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[2], torch.zeros(5, 16))
    # Manual masked softmax for row 1.
    q = ca.q(x[1]).view(5, 2, 8).transpose(0, 1)
    k, v = (z.view(4, 2, 8).transpose(0, 1) for z in ca.kv(ctx[1]).split(16, dim=-1))
    p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out[1], ca.proj((p @ v).transpose(0, 1).reshape(5, 16)))


def test_backend_switch_adds_and_removes_zero_projection():
    torch.manual_seed(0)
    attn = Attention(32, 2)
    assert attn.sla is None and not any("sla" in k for k in attn.state_dict())
    attn.set_backend("sla_reference")
    keys = [k for k in attn.state_dict() if k.startswith("sla.")]
    assert keys == ["sla.proj_l.weight", "sla.proj_l.bias"]
    assert attn.sla.proj_l.weight.shape == (16, 16) and not attn.sla.proj_l.weight.any()
    with torch.no_grad():
        attn.sla.proj_l.weight.fill_(0.5)
    attn.set_backend("sla", None)  # a trained projection survives a change of SLA backend
    assert attn.sla.backend == "sla" and (attn.sla.proj_l.weight == 0.5).all()
    attn.set_backend("sdpa")
    assert attn.sla is None and "sla.proj_l.weight" not in attn.state_dict()
    with pytest.raises(ValueError, match="attention backend must be one of"):
        attn.set_backend("flash")
