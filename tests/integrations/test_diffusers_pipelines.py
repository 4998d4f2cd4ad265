"""STG from unmodified diffusers pipeline calls (Wan: separate CFG calls; LTX-Video: one
batched [uncond; cond] call). Every transformer call the pipeline makes is recorded and checked
against the naive computation, and nothing remains once the handle is gone."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import tiny_ltx, tiny_wan

from slatte.integrations.diffusers_stg import enable_stg

pytest.importorskip("transformers")  # diffusers' Wan / LTX pipelines import it
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, WanPipeline  # noqa: E402

SCALE, GUIDANCE = 2.0, 3.0


def _record(transformer):
    """Capture the inputs the pipeline passes (a pre-hook registered before STG's) and the
    output it receives (a hook registered after STG's)."""
    calls = []

    def before(module, args, kwargs):
        calls.append({"kwargs": dict(kwargs)})

    def after(module, args, kwargs, output):
        calls[-1]["output"] = (output[0] if isinstance(output, tuple) else output.sample).clone()

    return calls, transformer.register_forward_pre_hook(before, with_kwargs=True), after


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


def _run_with_stg(pipe, call):
    calls, pre, after = _record(pipe.transformer)
    try:
        with enable_stg(pipe, scale=SCALE, blocks=[1]):
            post = pipe.transformer.register_forward_hook(after, with_kwargs=True)
            try:
                guided = call()
            finally:
                post.remove()
    finally:
        pre.remove()
    return calls, guided


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
    calls, guided = _run_with_stg(pipe, call)
    assert len(calls) == 4  # 2 steps × (cond, uncond)
    for i, record in enumerate(calls):
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
    calls, guided = _run_with_stg(pipe, call)
    assert len(calls) == 2
    for record in calls:
        e = _plain(pipe.transformer, record["kwargs"])
        e_p = _plain(pipe.transformer, record["kwargs"], perturb_block=1)
        e[1:] = e[1:] + SCALE / GUIDANCE * (e[1:] - e_p[1:])  # rows: [uncond, cond]
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)
