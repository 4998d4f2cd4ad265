"""CogVideoX: SLA on the video-to-video part of its joint [text; video] attention, STG through
its two-stream blocks, inside the unmodified CogVideoXPipeline (batched [uncond; cond] CFG)."""

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
    tiny_cogvideox,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_sla import enable_sla, from_pretrained_sla, save_pretrained_sla
from slatte.ops import SLAConfig, sla_block_map

pytest.importorskip("transformers")  # diffusers' CogVideoX pipeline imports it
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline  # noqa: E402

SMALL_BLOCKS = {"block_q": 16, "block_k": 16}
SCALE, GUIDANCE = 1.5, 3.0


def test_zero_projection_is_softmax_over_critical_video_blocks_and_all_text():
    from diffusers.models.embeddings import apply_rotary_emb

    model, inputs = tiny_cogvideox(), model_inputs("cogvideox")
    attn = model.transformer_blocks[1].attn1
    seen = attention_inputs(model, attn, inputs)
    config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
    enable_sla(model, config)
    with torch.no_grad():
        video, text = attn(**seen)
        # By hand, in diffusers' (B, H, N, D) layout: text first, then video.
        x = torch.cat([seen["encoder_hidden_states"], seen["hidden_states"]], 1)
        q, k, v = (
            p(x).unflatten(2, (2, -1)).transpose(1, 2) for p in (attn.to_q, attn.to_k, attn.to_v)
        )
        q, k = attn.norm_q(q), attn.norm_k(k)
        nt = seen["encoder_hidden_states"].shape[1]
        q[:, :, nt:] = apply_rotary_emb(q[:, :, nt:], seen["image_rotary_emb"])
        k[:, :, nt:] = apply_rotary_emb(k[:, :, nt:], seen["image_rotary_emb"])
        allowed = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).repeat(2, 2, 1, 1)
        critical = sla_block_map(q[:, :, nt:], k[:, :, nt:], config) == 1
        allowed[:, :, nt:, nt:] = critical.repeat_interleave(16, 2).repeat_interleave(16, 3)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        out = attn.to_out[0](out.transpose(1, 2).flatten(2))
    assert critical.sum(-1).eq(1).all()
    torch.testing.assert_close(video, out[:, nt:], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(text, out[:, :nt], atol=2e-5, rtol=1e-5)


def test_projections_survive_save_and_load(tmp_path):
    model, inputs = tiny_cogvideox(), model_inputs("cogvideox")
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    randomize_projections(model)
    expected = run(model, inputs)
    save_pretrained_sla(model, tmp_path / "cogvideox_sla")
    loaded = from_pretrained_sla(tmp_path / "cogvideox_sla")
    torch.testing.assert_close(run(loaded, inputs), expected, atol=0, rtol=0)


def _perturbed(model, kwargs, strategy):
    """A plain third pass, block 1 perturbed for every row by hooks written here."""
    block = model.transformer_blocks[1]

    def skip_block(module, args, kw, output):
        return kw["hidden_states"], kw["encoder_hidden_states"]

    def attention(module, args, kw, output):
        x, enc = kw["hidden_states"], kw["encoder_hidden_states"]
        if strategy == "attention_block":
            return torch.zeros_like(x), torch.zeros_like(enc)
        if strategy == "attention_skip":
            return x, enc
        return module.to_out[0](module.to_v(x)), module.to_out[0](module.to_v(enc))

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
def test_stg_in_the_pipeline_equals_the_naive_third_pass_for_two_prompts(strategy):
    pipe = CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_cogvideox(),
        scheduler=CogVideoXDDIMScheduler(),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    prompts, negatives = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)

    def call():
        return pipe(
            prompt_embeds=prompts, negative_prompt_embeds=negatives, height=64, width=64,
            num_frames=9, num_inference_steps=2, guidance_scale=GUIDANCE, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    plain = call()
    calls, guided = run_pipeline_with_stg(pipe, call, scale=SCALE, blocks=[1], strategy=strategy)
    assert len(calls) == 2
    for record in calls:
        with torch.no_grad():
            e = pipe.transformer(**record["kwargs"])[0]
        e_p = _perturbed(pipe.transformer, record["kwargs"], strategy)
        e[2:] = e[2:] + SCALE / GUIDANCE * (e[2:] - e_p[2:])  # rows: [u1, u2, c1, c2]
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    torch.testing.assert_close(call(), plain, atol=0, rtol=0)
