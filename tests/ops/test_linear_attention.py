"""Linear attention (the "linear only" backend) against SLA's linear branch over all blocks."""

from __future__ import annotations

import pytest
import torch

from slatte.models import VideoDiT, model_config
from slatte.ops import attention, linear_attention
from slatte.ops.sla.config import SLAConfig
from slatte.ops.sla.reference import linear_branch


@pytest.mark.parametrize("feature", ["softmax", "elu", "relu"])
def test_equals_the_linear_branch_with_every_key_in_scope(feature):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    everything = torch.ones(2, 3, 37, 37, dtype=torch.bool)
    expected = linear_branch(q, k, v, everything, feature)
    torch.testing.assert_close(linear_attention(q, k, v, feature=feature), expected)
    via_seam = attention(q, k, v, backend="linear", sla=SLAConfig(feature_map=feature))
    torch.testing.assert_close(via_seam, expected)


def test_half_precision_in_and_out_and_gradients():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(1, 2, 50, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3)
    )
    out = linear_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (q, k, v))


def test_bad_shapes_and_masks_are_refused():
    q = torch.randn(1, 2, 10, 8)
    with pytest.raises(ValueError, match="one batch, head"):
        linear_attention(q, torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4))
    with pytest.raises(ValueError, match="takes no attn_mask"):
        attention(q, q, q, backend="linear", attn_mask=torch.ones(10, 10, dtype=torch.bool))


def test_a_model_switches_to_linear_attention_and_back():
    torch.manual_seed(0)
    model = VideoDiT(model_config("Latte-T/2", block_pattern="full")).eval()
    with torch.no_grad():  # fill the zero-initialised gates too, so attention reaches the output
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape))
    x, t, y = torch.randn(2, 4, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 2])
    dense = model(x, t, y)
    model.set_attention_backend("linear", SLAConfig(feature_map="elu"))
    assert all(block.attn.sla is None for block in model.blocks)
    assert model.config.attention_backend == "linear"
    linear = model(x, t, y)
    assert linear.shape == dense.shape and torch.isfinite(linear).all()
    assert (linear - dense).abs().max() > 1e-3  # the blocks now attend differently
    model.set_attention_backend("sdpa")
    torch.testing.assert_close(model(x, t, y), dense)
