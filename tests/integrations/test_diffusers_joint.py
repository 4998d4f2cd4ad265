"""Joint SLA (diffusers_joint.py): without gradients the mass of the critical video blocks is the
SLA op's own log-sum-exp (`return_lse`); with gradients it is computed again in PyTorch
(`critical_log_mass`). Both give the same attention outputs, for every joint model's attention
(text padding included), on both SLA backends."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import (
    attention_inputs,
    model_inputs,
    randomize_projections,
    tiny_cogvideox,
    tiny_hunyuan,
    tiny_hunyuan15,
    tiny_mochi,
)

from slatte.integrations.diffusers_sla import enable_sla

# (model, its tiny builder, the attention module's path)
ATTENTIONS = [
    ("hunyuan", tiny_hunyuan, "transformer_blocks.0.attn"),
    ("hunyuan", tiny_hunyuan, "single_transformer_blocks.0.attn"),
    ("hunyuan15", tiny_hunyuan15, "transformer_blocks.0.attn"),
    ("cogvideox", tiny_cogvideox, "transformer_blocks.1.attn1"),
    ("mochi", tiny_mochi, "transformer_blocks.0.attn1"),
]


@pytest.mark.parametrize("backend", ["sla", "sla_reference"])
@pytest.mark.parametrize(("name", "build", "path"), ATTENTIONS)
def test_the_ops_lse_gives_what_the_differentiable_mass_gives(name, build, path, backend):
    model, inputs = build(), model_inputs(name)
    attn = model.get_submodule(path)
    seen = attention_inputs(model, attn, inputs)
    # 2 of the 3 video key blocks critical, the rest in the linear branch.
    enable_sla(model, critical=2, negligible=0, block_q=16, block_k=16, backend=backend)
    randomize_projections(model)
    with torch.no_grad():
        fast = attn(**seen)
    with torch.enable_grad():
        differentiable = attn(**seen)
    assert differentiable[0].requires_grad  # (the path that computes the mass again)
    for got, want in zip(fast, differentiable, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=2e-5, rtol=1e-5)
