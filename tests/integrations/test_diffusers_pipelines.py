"""STG from unmodified diffusers pipeline calls (Wan: separate CFG calls; LTX-Video: one
batched [uncond; cond] call). Every transformer call the pipeline makes is recorded and checked
against the naive computation, and nothing remains once the handle is gone."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import (
    naive_perturbed,
    run_pipeline_with_stg,
    tiny_ltx,
    tiny_wan,
    tiny_wan22_pipeline,
)

from slatte.integrations.diffusers_sla import SLAAttnProcessor, disable_sla, enable_sla
from slatte.integrations.diffusers_stg import enable_stg

pytest.importorskip("transformers")  # diffusers' Wan / LTX pipelines import it
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, WanPipeline  # noqa: E402

SCALE, GUIDANCE = 2.0, 3.0


def _plain(model, kwargs, perturb_block=None):
    kwargs = {**kwargs, "return_dict": False}
    handle = None
    if perturb_block is not None:
        block = (model.blocks if hasattr(model, "blocks") else model.transformer_blocks)[
            perturb_block
        ]
        handle = block.register_forward_hook(
            lambda m, a, k, o: k["hidden_states"] if "hidden_states" in k else a[0],
            with_kwargs=True,
        )
    try:
        with torch.no_grad():
            return model(**kwargs)[0]
    finally:
        if handle is not None:
            handle.remove()


def test_wan_pipeline_guides_the_conditional_calls_only():
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_wan(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)

    def call():
        return pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=5, num_inference_steps=2, guidance_scale=GUIDANCE, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    plain = call()
    calls, guided = run_pipeline_with_stg(pipe, call, scale=SCALE, blocks=[1])
    assert len(calls) == 4  # 2 steps × (cond, uncond)
    for i, record in enumerate(calls):
        assert record["model"] is pipe.transformer
        e = _plain(pipe.transformer, record["kwargs"])
        if i % 2 == 0:  # conditional: e_c + (scale / g)(e_c − e_p)
            e_p = _plain(pipe.transformer, record["kwargs"], perturb_block=1)
            e = e + SCALE / GUIDANCE * (e - e_p)
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)  # nothing left behind


def test_ltx_pipeline_guides_the_conditional_half_of_the_batch():
    pipe = LTXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_ltx(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    mask = torch.ones(1, 5)

    def call():
        return pipe(
            prompt_embeds=prompt, prompt_attention_mask=mask, negative_prompt_embeds=negative,
            negative_prompt_attention_mask=mask, height=64, width=64, num_frames=9,
            num_inference_steps=2, guidance_scale=GUIDANCE, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    plain = call()
    calls, guided = run_pipeline_with_stg(pipe, call, scale=SCALE, blocks=[1])
    assert len(calls) == 2
    for record in calls:
        e = _plain(pipe.transformer, record["kwargs"])
        e_p = _plain(pipe.transformer, record["kwargs"], perturb_block=1)
        e[1:] = e[1:] + SCALE / GUIDANCE * (e[1:] - e_p[1:])  # rows: [uncond, cond]
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)


def test_wan22_two_expert_pipeline_guides_both_experts_with_their_own_cfg_scale():
    """Wan2.2: the high-noise expert (`transformer`, guidance_scale) runs the first step, the
    low-noise one (`transformer_2`, guidance_scale_2) the second; enable_sla / enable_stg on the
    pipeline reach both."""
    pipe = tiny_wan22_pipeline(0.9)
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    guidance = {pipe.transformer: GUIDANCE, pipe.transformer_2: 5.0}

    def call():
        return pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=5, num_inference_steps=2, guidance_scale=GUIDANCE,
            guidance_scale_2=guidance[pipe.transformer_2], output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    plain = call()
    enable_sla(pipe, critical=0.5, block_q=16, block_k=16)
    assert all(isinstance(t.blocks[0].attn1.processor, SLAAttnProcessor) for t in guidance)
    calls, guided = run_pipeline_with_stg(pipe, call, scale=SCALE, blocks=[1])
    assert [r["model"] for r in calls] == [pipe.transformer] * 2 + [pipe.transformer_2] * 2
    for i, record in enumerate(calls):
        model = record["model"]
        e = _plain(model, record["kwargs"])
        if i % 2 == 0:  # each expert's conditional call, with its own CFG scale
            e_p = _plain(model, record["kwargs"], perturb_block=1)
            e = e + SCALE / guidance[model] * (e - e_p)
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    disable_sla(pipe)
    assert not any(hasattr(m, "sla") for t in guidance for m in t.modules())
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)


def test_wan22_experts_take_their_own_stg_terms():
    """scale_2 / blocks_2 / strategy_2 give the low-noise expert its own STG term (the STG
    search's `guider_2` choice); bad ones are refused before any hook goes on."""
    pipe = tiny_wan22_pipeline(0.9)
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    terms = {
        pipe.transformer: (SCALE, 1, "transformer_block", GUIDANCE),
        pipe.transformer_2: (0.5, 0, "attention_values", 5.0),
    }

    def call():
        return pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=5, num_inference_steps=2, guidance_scale=GUIDANCE, guidance_scale_2=5.0,
            output_type="latent", generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    calls, _ = run_pipeline_with_stg(
        pipe, call, scale=SCALE, blocks=[1], strategy="transformer_block", scale_2=0.5,
        blocks_2=[0], strategy_2="attention_values",
    )  # fmt: skip
    assert [r["model"] for r in calls] == [pipe.transformer] * 2 + [pipe.transformer_2] * 2
    for i, record in enumerate(calls):
        model, kwargs = record["model"], {**record["kwargs"], "return_dict": False}
        e = _plain(model, kwargs)
        if i % 2 == 0:
            scale, block, strategy, guidance = terms[model]
            e_p = naive_perturbed(model, {**kwargs, "return_dict": True}, block, strategy)
            e = e + scale / guidance * (e - e_p)
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"blocks_2 must be a non-empty list .* got \(2,\)"):
        enable_stg(pipe, blocks=[1], blocks_2=[2])
    with pytest.raises(ValueError, match="scale_2 must be a number, got 'x'"):
        enable_stg(pipe, blocks=[1], scale_2="x")
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer_2._forward_pre_hooks
    one = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_wan(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="blocks_2, strategy_2 set the STG of a second expert"):
        enable_stg(one, blocks=[1], blocks_2=[0], strategy_2="attention_values")
