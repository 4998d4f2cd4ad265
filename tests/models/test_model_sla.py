"""The model on the SLA backends (needs the SLA reference op)."""

from __future__ import annotations

import torch
from model_testing import tiny_inputs, tiny_model

from slatte.nn import Attention
from slatte.ops.sla import SLAConfig


def test_sla_reference_with_all_blocks_critical_equals_sdpa():
    torch.manual_seed(0)
    attn = Attention(32, 2)
    x = torch.randn(2, 40, 32)
    dense = attn(x)
    attn.set_backend(
        "sla_reference", SLAConfig(critical=1.0, negligible=0.0, block_q=16, block_k=16)
    )
    torch.testing.assert_close(attn(x), dense, atol=1e-5, rtol=1e-5)


def test_dense_to_sla_switch_keeps_outputs_and_adds_only_zero_projections():
    model = tiny_model(text_dim=12, depth=2)
    x, t, y, kw = tiny_inputs(model.config)
    before = dict(model.state_dict())
    with torch.no_grad():
        dense = model(x, t, y, **kw)
    sla = SLAConfig(critical=1.0, negligible=0.0, block_q=16, block_k=16)
    model.set_attention_backend("sla_reference", sla)
    assert model.config.attention_backend == "sla_reference" and model.config.sla == sla
    after = model.state_dict()
    added = sorted(set(after) - set(before))
    assert added == sorted(
        f"blocks.{i}.attn.sla.proj_l.{p}" for i in range(2) for p in ("weight", "bias")
    )
    assert all(not after[k].any() for k in added)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, **kw), dense, atol=1e-5, rtol=1e-5)
    model.set_attention_backend("sdpa")
    assert set(model.state_dict()) == set(before)
    assert model.config.attention_backend == "sdpa"
