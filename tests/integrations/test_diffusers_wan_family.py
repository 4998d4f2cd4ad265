"""The Wan family beyond Wan2.1: Wan-VACE (control blocks beside the main ones, a control scale
shared by the batch) and SkyReels-V2 (Wan's attention in its own classes)."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import (
    model_inputs,
    naive_perturbed,
    randomize_projections,
    run,
    tiny_skyreels,
    tiny_vace,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_qk import wan_qk
from slatte.integrations.diffusers_sla import (
    enable_sla,
    from_pretrained_sla,
    project_qkv,
    save_pretrained_sla,
)
from slatte.integrations.diffusers_stg import enable_stg
from slatte.ops import SLAConfig, sla_block_map

SMALL_BLOCKS = {"block_q": 16, "block_k": 16}
SCALE = 1.5
MODELS = {"vace": tiny_vace, "skyreels": tiny_skyreels}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_projection_equals_the_models_processor_with_the_block_mask(name):
    """Each model's own processor, given SLA's critical blocks as its attention mask, is what
    SLA with zero projections computes (VACE: a control block's self-attention too)."""
    model, inputs = MODELS[name](), model_inputs(name)
    attn = (model.vace_blocks if name == "vace" else model.blocks)[1].attn1
    original, captured = attn.processor, {}
    handle = attn.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(x=args[0], rotary=args[3]), with_kwargs=True
    )
    run(model, inputs)
    handle.remove()
    x, rotary = captured["x"], captured["rotary"]
    config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
    enable_sla(model, config)
    with torch.no_grad():
        sla_out = attn(x, None, None, rotary)
        q, k, _ = project_qkv(attn, x, wan_qk, rotary)
        block_map = sla_block_map(q, k, config, layout="bnhd")
        token_mask = (block_map == 1).repeat_interleave(16, 2).repeat_interleave(16, 3)
        masked = original(attn, x, None, token_mask, rotary)
    assert (block_map == 1).sum(-1).eq(1).all()
    torch.testing.assert_close(sla_out, masked, atol=2e-5, rtol=1e-5)


def test_vace_projections_cover_the_control_blocks_and_survive_save_and_load(tmp_path):
    model, inputs = tiny_vace(), model_inputs("vace")
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    names = [n for n, _ in model.named_parameters() if "proj_l.weight" in n]
    assert names == [f"{stack}.{i}.attn1.sla.proj_l.weight" for stack in ("blocks", "vace_blocks")
                     for i in (0, 1)]  # fmt: skip
    randomize_projections(model)
    expected = run(model, inputs)
    save_pretrained_sla(model, tmp_path / "vace_sla")
    loaded = from_pretrained_sla(tmp_path / "vace_sla")
    torch.testing.assert_close(run(loaded, inputs), expected, atol=0, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stg_equals_the_naive_third_pass_for_two_prompts(name, strategy):
    """VACE: the control scale has one entry per VACE layer, as many as the batch has rows; it
    is shared, so the perturbed rows must not get a copy of it."""
    model, inputs = MODELS[name](), model_inputs(name)
    e_c = run(model, inputs)
    e_p = naive_perturbed(model, inputs, 1, strategy)
    expected = e_c + SCALE * (e_c - e_p)
    for fork in (True, False):
        with enable_stg(model, scale=SCALE, blocks=[1], strategy=strategy, fork=fork):
            guided = run(model, inputs)
        torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    assert (guided - e_c).abs().max() > 1e-3


def test_skyreels_refuses_a_processor_installed_by_someone_else():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    model = tiny_skyreels()
    model.blocks[0].attn1.set_processor(WanAttnProcessor())
    with pytest.raises(ValueError, match="block 0.*WanAttnProcessor.*SkyReelsV2AttnProcessor"):
        enable_sla(model)
