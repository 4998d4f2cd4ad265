"""The fused Linear + tanh-GELU layers of diffusers feed-forward blocks."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import MODELS, model_inputs, tiny_wan

from slatte.integrations.diffusers_gelu import (
    FusedTanhGELU,
    disable_fused_gelu,
    enable_fused_gelu,
)
from slatte.ops.linear_gelu import linear_gelu_tanh


def _run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def test_op_equals_linear_then_gelu():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 7, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")
    torch.testing.assert_close(linear_gelu_tanh(x, w, b), expected)
    torch.library.opcheck(
        linear_gelu_tanh, (x, w, b), test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused GEMM runs on CUDA")
def test_cuda_epilogue_is_the_tanh_gelu():
    """cuBLASLt's GELU epilogue must be the tanh approximation (fp32: the two GELUs differ by up
    to ~1e-3 here, far above the GEMM's rounding)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x, w = (torch.randn(s, device="cuda", generator=g) for s in ((256, 64), (128, 64)))
    b = torch.randn(128, device="cuda", generator=g)
    z = torch.nn.functional.linear(x.double(), w.double(), b.double())
    out = linear_gelu_tanh(x, w, b).double()
    tanh_err = (out - torch.nn.functional.gelu(z, approximate="tanh")).abs().max()
    erf_err = (out - torch.nn.functional.gelu(z)).abs().max()
    assert tanh_err < 1e-4 < erf_err, (tanh_err, erf_err)


def test_op_compiles_without_graph_breaks():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(5, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8)
    compiled = torch.compile(lambda x: linear_gelu_tanh(x, w, b) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), 2 * linear_gelu_tanh(x, w, b))


@pytest.mark.parametrize("name", ["wan", "ltx"])
def test_fused_model_matches_and_undoes(name, monkeypatch):
    import slatte.integrations.diffusers_gelu as module

    model, inputs = MODELS[name](), model_inputs(name)
    before = _run(model, inputs)
    from diffusers.models.activations import GELU

    originals = [m for m in model.modules() if isinstance(m, GELU)]
    keys = model.state_dict().keys()
    fused = enable_fused_gelu(model)
    assert fused == sum(isinstance(m, FusedTanhGELU) for m in model.modules()) > 0
    assert fused == len(originals) and not any(isinstance(m, GELU) for m in model.modules())
    assert model.state_dict().keys() == keys  # same parameter names: save_pretrained unchanged
    calls = []

    def counted(*args):
        calls.append(1)
        return linear_gelu_tanh(*args)

    monkeypatch.setattr(module, "linear_gelu_tanh", counted)
    torch.testing.assert_close(_run(model, inputs), before, atol=1e-5, rtol=1e-5)
    assert len(calls) == fused  # every fused layer ran through the op, once per forward
    assert disable_fused_gelu(model) == fused
    assert not any(isinstance(m, FusedTanhGELU) for m in model.modules())
    assert [m for m in model.modules() if isinstance(m, GELU)] == originals


def test_with_gradients_the_layer_runs_unfused(monkeypatch):
    """Training needs the pre-activation for the GELU's backward: the fused op is not called."""
    model, inputs = tiny_wan(), model_inputs("wan")
    enable_fused_gelu(model)
    calls = []
    import slatte.integrations.diffusers_gelu as module

    monkeypatch.setattr(module, "linear_gelu_tanh", lambda *a: calls.append(1))
    model.train()
    model(**inputs).sample.square().mean().backward()
    assert not calls
    assert all(p.grad is not None for p in model.blocks[0].ffn.parameters())


def test_model_without_tanh_gelu_is_refused():
    with pytest.raises(ValueError, match=r"has no diffusers GELU\(approximate='tanh'\)"):
        enable_fused_gelu(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()))
