"""Mochi: SLA on the video-to-video part of its joint attention (each prompt's real text tokens
only, as Mochi's own processor), on `MochiAttention`, which has no `set_processor`; STG through
its two-stream blocks inside the unmodified MochiPipeline (batched [uncond; cond] CFG)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_testing import (
    attention_inputs,
    model_inputs,
    randomize_projections,
    run,
    run_pipeline_with_stg,
    tiny_mochi,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_sla import enable_sla, from_pretrained_sla, save_pretrained_sla
from slatte.ops import SLAConfig, sla_block_map

pytest.importorskip("transformers")  # diffusers' Mochi pipeline imports it
from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline  # noqa: E402

SMALL_BLOCKS = {"block_q": 16, "block_k": 16}
SCALE, GUIDANCE = 1.5, 3.0


def _rotate(x, cos, sin):  # Mochi's (even, odd) pair rotation
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)


def test_zero_projection_is_softmax_over_critical_video_blocks_and_real_text():
    model, inputs = tiny_mochi(), model_inputs("mochi")
    attn = model.transformer_blocks[0].attn1
    seen = attention_inputs(model, attn, inputs)
    config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
    enable_sla(model, config)
    with torch.no_grad():
        video, text = attn(**seen)
        x, enc, mask = seen["hidden_states"], seen["encoder_hidden_states"], seen["attention_mask"]
        heads = (lambda t: t.unflatten(2, (2, -1)))  # fmt: skip
        q_v = _rotate(attn.norm_q(heads(attn.to_q(x))), *seen["image_rotary_emb"])
        k_v = _rotate(attn.norm_k(heads(attn.to_k(x))), *seen["image_rotary_emb"])
        q_t, k_t = (
            attn.norm_added_q(heads(attn.add_q_proj(enc))),
            attn.norm_added_k(heads(attn.add_k_proj(enc))),
        )
        q, k = torch.cat([q_v, q_t], 1).transpose(1, 2), torch.cat([k_v, k_t], 1).transpose(1, 2)
        v = torch.cat([heads(attn.to_v(x)), heads(attn.add_v_proj(enc))], 1).transpose(1, 2)
        nv = x.shape[1]
        real = torch.cat([torch.ones(2, nv, dtype=torch.bool), mask.bool()], 1)
        allowed = (real[:, None, :, None] & real[:, None, None, :]).repeat(1, 2, 1, 1)
        critical = sla_block_map(q[:, :, :nv], k[:, :, :nv], config) == 1
        allowed[:, :, :nv, :nv] = critical.repeat_interleave(16, 2).repeat_interleave(16, 3)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2)
        out = out.nan_to_num(0.0).flatten(2)  # padded text queries: zero, as Mochi's processor
    assert critical.sum(-1).eq(1).all() and not mask.all()
    torch.testing.assert_close(video, attn.to_out[0](out[:, :nv]), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(text, attn.to_add_out(out[:, nv:]), atol=2e-5, rtol=1e-5)


def test_padded_text_tokens_take_no_part_and_save_load_keeps_the_projections(tmp_path):
    model, inputs = tiny_mochi(), model_inputs("mochi")
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    randomize_projections(model)
    expected = run(model, inputs)
    noisy = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
    noisy["encoder_hidden_states"][1, 4:] += 5.0
    torch.testing.assert_close(run(model, noisy), expected, atol=1e-5, rtol=1e-5)
    save_pretrained_sla(model, tmp_path / "mochi_sla")
    loaded = from_pretrained_sla(tmp_path / "mochi_sla")
    torch.testing.assert_close(run(loaded, inputs), expected, atol=0, rtol=0)


def _perturbed(model, kwargs, index, strategy):
    """A plain third pass, block `index` perturbed for every row by hooks written here."""
    block = model.transformer_blocks[index]

    def skip_block(module, args, kw, output):
        return kw["hidden_states"], kw["encoder_hidden_states"]

    def attention(module, args, kw, output):
        x, enc = kw["hidden_states"], kw["encoder_hidden_states"]
        if strategy == "attention_block":
            return torch.zeros_like(output[0]), torch.zeros_like(output[1])
        if strategy == "attention_skip":
            return x, enc
        # The last block (context_pre_only) has no to_add_out and discards its text output.
        to_add_out = getattr(module, "to_add_out", None)
        text = to_add_out(module.add_v_proj(enc)) if to_add_out is not None else output[1]
        return module.to_out[0](module.to_v(x)), text

    target, fn = (
        (block, skip_block) if strategy == "transformer_block" else (block.attn1, attention)
    )
    handle = target.register_forward_hook(fn, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(**kwargs)[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("index", [0, 1])  # block 1, the last, is context_pre_only
def test_stg_in_the_pipeline_equals_the_naive_third_pass_for_two_prompts(index, strategy):
    pipe = MochiPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_mochi(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    prompts, negatives = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    mask = torch.arange(6) < torch.tensor([[6], [4]])

    def call():
        return pipe(
            prompt_embeds=prompts, prompt_attention_mask=mask, negative_prompt_embeds=negatives,
            negative_prompt_attention_mask=mask, height=64, width=64, num_frames=13,
            num_inference_steps=2, guidance_scale=GUIDANCE, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    plain = call()
    calls, guided = run_pipeline_with_stg(
        pipe, call, scale=SCALE, blocks=[index], strategy=strategy
    )
    assert len(calls) == 2
    for record in calls:
        with torch.no_grad():
            e = pipe.transformer(**record["kwargs"])[0]
        e_p = _perturbed(pipe.transformer, record["kwargs"], index, strategy)
        e[2:] = e[2:] + SCALE / GUIDANCE * (e[2:] - e_p[2:])  # rows: [u1, u2, c1, c2]
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)
