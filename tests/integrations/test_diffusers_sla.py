"""SLA inside tiny random diffusers transformers: exactness limits, masks, save/load, undo."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import MODELS, model_inputs, randomize_projections, tiny_wan

from slatte.integrations.diffusers_joint import JointSLAAttnProcessor
from slatte.integrations.diffusers_qk import wan_qk
from slatte.integrations.diffusers_sla import (
    SLAAttnProcessor,
    disable_sla,
    enable_sla,
    from_pretrained_sla,
    load_sla_projections,
    project_qkv,
    save_pretrained_sla,
)
from slatte.ops import SLAConfig, sla_block_map

# 48 tokens in blocks of 16: three query blocks and three key blocks per sequence.
SMALL_BLOCKS = {"block_q": 16, "block_k": 16}


def _run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("name", sorted(MODELS))
def test_all_critical_leaves_the_model_unchanged(name):
    model, inputs = MODELS[name](), model_inputs(name)
    dense = _run(model, inputs)
    enable_sla(model, critical=1.0, **SMALL_BLOCKS)
    with_sla = [m for m in model.modules() if hasattr(m, "sla")]
    assert with_sla and all(
        isinstance(m.processor, (SLAAttnProcessor, JointSLAAttnProcessor)) for m in with_sla
    )
    torch.testing.assert_close(_run(model, inputs), dense, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparse_sla_changes_the_output_and_disable_restores_it(name):
    model, inputs = MODELS[name](), model_inputs(name)
    originals = [m.processor for m in model.modules() if hasattr(m, "processor")]
    dense = _run(model, inputs)
    enable_sla(model, critical=1, negligible=1, **SMALL_BLOCKS)
    assert (_run(model, inputs) - dense).abs().max() > 1e-3
    disable_sla(model)
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == originals
    assert not any("proj_l" in key for key in model.state_dict())
    torch.testing.assert_close(_run(model, inputs), dense, atol=0, rtol=0)


def test_zero_projection_equals_block_masked_dense_attention():
    """With proj_l = 0, SLA is softmax attention restricted to the critical blocks: diffusers'
    own Wan processor with that block mask as attention_mask must give the same output."""
    model = tiny_wan()
    inputs = model_inputs("wan")
    captured = {}
    attn = model.blocks[1].attn1
    original = attn.processor

    def grab(module, args, kwargs):
        captured["x"], captured["rotary"] = args[0], args[3]

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    _run(model, inputs)
    handle.remove()
    x, rotary = captured["x"], captured["rotary"]

    enable_sla(model, critical=1, negligible=1, **SMALL_BLOCKS)
    with torch.no_grad():
        sla_out = attn(x, None, None, rotary)
        q, k, _ = project_qkv(attn, x, wan_qk, rotary)
        config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
        block_map = sla_block_map(q, k, config, layout="bnhd")
        token_mask = (block_map == 1).repeat_interleave(16, 2).repeat_interleave(16, 3)
        masked = original(attn, x, None, token_mask, rotary)
    assert (block_map == 1).sum(-1).eq(1).all()  # the mask really is sparse: 1 of 3 blocks
    torch.testing.assert_close(sla_out, masked, atol=2e-5, rtol=1e-5)


def test_projections_are_trainable_parameters():
    model = tiny_wan()
    enable_sla(model, critical=1, negligible=0, **SMALL_BLOCKS)
    names = [n for n, _ in model.named_parameters() if "proj_l" in n]
    assert names == [f"blocks.{i}.attn1.sla.proj_l.{p}" for i in (0, 1) for p in ("weight", "bias")]
    out = model(**model_inputs("wan")).sample
    out.square().mean().backward()
    grad = model.blocks[0].attn1.sla.proj_l.weight.grad
    assert grad is not None and grad.abs().max() > 0


def test_projections_survive_save_pretrained_and_from_pretrained(tmp_path):
    model = tiny_wan()
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    randomize_projections(model)
    inputs = model_inputs("wan")
    expected = _run(model, inputs)
    save_pretrained_sla(model, tmp_path / "wan_sla")
    loaded = from_pretrained_sla(tmp_path / "wan_sla")
    assert loaded.blocks[0].attn1.sla.config == model.blocks[0].attn1.sla.config
    torch.testing.assert_close(_run(loaded, inputs), expected, atol=0, rtol=0)


def test_official_projection_keys_load_by_block_index():
    model = tiny_wan()
    enable_sla(model, critical=1, linear_scope="all", **SMALL_BLOCKS)
    state = {
        f"blocks.{i}.self_attn.attn_op.proj_l.{p}": torch.full(
            (16, 16) if p == "weight" else (16,), float(i + 1)
        )
        for i in (0, 1)
        for p in ("weight", "bias")
    }
    state["blocks.0.self_attn.q.weight"] = torch.zeros(32, 32)  # not a projection: ignored
    assert load_sla_projections(model, state) == [0, 1]
    assert model.blocks[1].attn1.sla.proj_l.weight.eq(2.0).all()
    assert model.blocks[0].attn1.sla.proj_l.bias.eq(1.0).all()
    with pytest.raises(ValueError, match=r"block\(s\) \[1\]"):
        load_sla_projections(model, {k: v for k, v in state.items() if k.startswith("blocks.0")})


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match="unsupported transformer class Linear.*WanTransformer3DModel"
    ):
        enable_sla(torch.nn.Linear(2, 2))
    wide = pytest.importorskip("diffusers").WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=36, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1,
    )  # fmt: skip
    # A head dim the fused kernels do not serve (no multiple of 8) runs through the block-sparse
    # PyTorch ops, and gives the reference's output.
    inputs = model_inputs("wan")
    enable_sla(wide, backend="sla_reference", critical=0.5, block_q=16, block_k=16)
    randomize_projections(wide)
    with torch.no_grad():
        reference = wide(**inputs, return_dict=False)[0]
        enable_sla(wide, critical=0.5, block_q=16, block_k=16)  # keeps the projections
        torch.testing.assert_close(wide(**inputs, return_dict=False)[0], reference)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained_sla(tmp_path / "missing")
    broken = tiny_wan()
    broken.blocks[1].attn1 = torch.nn.Identity()  # as if diffusers had renamed the module
    with pytest.raises(ValueError, match=r"block 1 of WanTransformer3DModel .*'attn1'.*diffusers"):
        enable_sla(broken)
    with pytest.raises(ValueError, match="critical"):
        enable_sla(tiny_wan(), critical=0.0)
    with pytest.raises(ValueError, match="not both"):
        from slatte.ops import SLAConfig

        enable_sla(tiny_wan(), SLAConfig(), critical=0.1)


def test_wan_qk_norms_and_rotation_run_fused_in_inference_only(monkeypatch):
    """Inference takes the fused RMS-norm + rotary op (the whole-model test above compares its
    output with diffusers' own processor); with gradients the modules run, as the op has no
    backward."""
    from slatte.integrations import diffusers_qk

    calls = []
    fused = diffusers_qk.rms_norm_rotary_qk

    def counting(*args):
        calls.append(1)
        return fused(*args)

    monkeypatch.setattr(diffusers_qk, "rms_norm_rotary_qk", counting)
    model, inputs = tiny_wan(), model_inputs("wan")
    enable_sla(model, critical=0.5, **SMALL_BLOCKS)
    out = _run(model, inputs)
    assert len(calls) == len(model.blocks)
    calls.clear()
    model(**inputs).sample.square().mean().backward()
    assert not calls
    assert model.blocks[0].attn1.norm_q.weight.grad.abs().sum() > 0
    monkeypatch.setattr(diffusers_qk, "_fused_wan_qk", lambda *args: None)
    torch.testing.assert_close(_run(model, inputs), out, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latte_head_dim_72_runs_on_the_fused_kernels(monkeypatch):
    """The released diffusers Latte has head dim 72: "auto" takes the fused Triton kernels for
    it (their tiles 128 wide, the lanes past 72 masked), with the reference's output."""
    from diffusers import LatteTransformer3DModel

    from slatte.ops.sla import interface

    chosen = []
    select = interface.select_kernels
    monkeypatch.setattr(
        interface, "select_kernels", lambda *args: chosen.append(select(*args)) or chosen[-1]
    )
    torch.manual_seed(0)
    model = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=72, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=1, cross_attention_dim=144, caption_channels=16,
        video_length=3, norm_elementwise_affine=False,
    ).eval().cuda()  # fmt: skip
    inputs = {k: v.cuda() for k, v in model_inputs("latte").items()}
    enable_sla(model, backend="sla_reference", critical=0.5, **SMALL_BLOCKS)
    randomize_projections(model)
    reference = _run(model, inputs)
    enable_sla(model, critical=0.5, **SMALL_BLOCKS)  # keeps the projections
    chosen.clear()
    out = _run(model, inputs)
    assert chosen and set(chosen) == {"triton"}, chosen
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
