"""LTX-2: SLA on the video self-attention only (per-head gates, both rotary layouts, the model's
own perturbation mask still honoured), the audio stream and every cross-attention dense; STG
through its two-stream (video, audio) blocks inside the unmodified LTX2Pipeline (batched
[uncond; cond] CFG, a CFG scale per modality), the audio output guided and trimmed too."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import (
    attention_inputs,
    model_inputs,
    randomize_projections,
    run_pipeline_with_stg,
    tiny_ltx2,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_qk import ltx2_qk
from slatte.integrations.diffusers_sla import (
    SLAAttnProcessor,
    disable_sla,
    enable_sla,
    from_pretrained_sla,
    project_qkv,
    save_pretrained_sla,
)
from slatte.integrations.diffusers_stg import enable_stg
from slatte.ops import SLAConfig, sla_block_map

pytest.importorskip("transformers")  # diffusers' LTX-2 pipeline imports it
from diffusers import (  # noqa: E402
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
)
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors  # noqa: E402

SMALL_BLOCKS = {"block_q": 16, "block_k": 16}
SCALE, GUIDANCE, AUDIO_GUIDANCE = 1.5, 3.0, 5.0


def _both(model, inputs, **extra):
    """The model's (video, audio) outputs."""
    with torch.no_grad():
        return model(**{**inputs, **extra, "return_dict": False})


# LTX-2.3's gates and STG-capable processor with one rotary layout, LTX-2.0's plain ones with the
# other.
@pytest.mark.parametrize(("rope_type", "ltx23"), [("interleaved", True), ("split", False)])
def test_zero_projection_is_the_models_attention_over_the_critical_blocks(rope_type, ltx23):
    """With proj_l = 0, SLA is the model's own attention (its processor, untouched code, gates
    included) with the critical-block mask as attention mask."""
    model, inputs = tiny_ltx2(rope_type=rope_type, ltx23=ltx23), model_inputs("ltx2")
    attn = model.transformer_blocks[1].attn1
    original = attn.processor
    seen = attention_inputs(model, attn, inputs)
    x, rotary = seen["hidden_states"], seen["query_rotary_emb"]
    config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
    enable_sla(model, config)
    block = model.transformer_blocks[1]
    dense = (block.audio_attn1, block.attn2, block.audio_attn2, block.audio_to_video_attn,
             block.video_to_audio_attn)  # fmt: skip
    assert isinstance(attn.processor, SLAAttnProcessor)
    assert not any(isinstance(m.processor, SLAAttnProcessor) or hasattr(m, "sla") for m in dense)
    with torch.no_grad():
        sla_out = attn(**seen)
        q, k, _ = project_qkv(attn, x, ltx2_qk, rotary)
        critical = sla_block_map(q, k, config, layout="bnhd") == 1  # (B, H, 3, 3)
        token_mask = critical.repeat_interleave(16, 2).repeat_interleave(16, 3)
        masked = original(attn, x, None, token_mask.flatten(0, 1), rotary)
    assert critical.sum(-1).eq(1).all()  # sparse: 1 of 3 blocks
    assert (attn.to_gate_logits is not None) == ltx23
    torch.testing.assert_close(sla_out, masked, atol=2e-5, rtol=1e-5)


def test_sla_keeps_the_audio_exact_and_disable_restores_both_outputs():
    model, inputs = tiny_ltx2(), model_inputs("ltx2")
    video, audio = _both(model, inputs)
    enable_sla(model, critical=1.0, **SMALL_BLOCKS)
    for out, ref in zip(_both(model, inputs), (video, audio), strict=True):
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    enable_sla(model, critical=1, negligible=1, **SMALL_BLOCKS)
    sparse_video, sparse_audio = _both(model, inputs)
    # The audio hears the video through the a2v / v2a cross-attention, so it changes too.
    assert (sparse_video - video).abs().max() > 1e-3
    assert (sparse_audio - audio).abs().max() > 1e-4
    disable_sla(model)
    for out, ref in zip(_both(model, inputs), (video, audio), strict=True):
        torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_the_models_own_stg_still_works_under_sla():
    """The model's STG (`spatio_temporal_guidance_blocks`, a perturbation mask per row) reaches
    the SLA processor: with every block critical, it gives what the untouched model gives."""
    model, inputs = tiny_ltx2(), model_inputs("ltx2")
    plain = _both(model, inputs)
    cases = [{"spatio_temporal_guidance_blocks": [1]},  # every row perturbed
             {"spatio_temporal_guidance_blocks": [1], "perturbation_mask": torch.tensor([1.0, 0.0])}]  # fmt: skip
    expected = [_both(model, inputs, **case) for case in cases]
    assert (expected[1][0][1] - plain[0][1]).abs().max() > 1e-3
    torch.testing.assert_close(expected[1][0][0], plain[0][0])  # row 0 not perturbed
    enable_sla(model, critical=1.0, **SMALL_BLOCKS)
    for case, want in zip(cases, expected, strict=True):
        for out, ref in zip(_both(model, inputs, **case), want, strict=True):
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_projections_survive_save_and_load(tmp_path):
    model, inputs = tiny_ltx2(), model_inputs("ltx2")
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    randomize_projections(model)
    names = [n for n, _ in model.named_parameters() if "proj_l" in n]
    assert names == [
        f"transformer_blocks.{i}.attn1.sla.proj_l.{p}" for i in (0, 1) for p in ("weight", "bias")
    ]
    expected = _both(model, inputs)
    save_pretrained_sla(model, tmp_path / "ltx2_sla")
    loaded = from_pretrained_sla(tmp_path / "ltx2_sla")
    for out, ref in zip(_both(loaded, inputs), expected, strict=True):
        torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_sla_refuses_a_video_self_attention_mask():
    model, inputs = tiny_ltx2(), model_inputs("ltx2")
    enable_sla(model, critical=0.5, **SMALL_BLOCKS)
    mask = torch.ones(2, 48, 48)
    with pytest.raises(ValueError, match="without a mask.*attention_mask=a tensor"):
        _both(model, inputs, video_self_attention_mask=mask)


def _perturbed(model, kwargs, index, strategy):
    """A plain third pass, block `index` perturbed for every row, by hooks written here or by
    the model's own STG (which is `attention_values` on both self-attentions)."""
    if strategy == "attention_values":
        return _both(model, kwargs, spatio_temporal_guidance_blocks=[index])
    block = model.transformer_blocks[index]

    def skip_block(module, args, kw, output):
        return kw["hidden_states"], kw["audio_hidden_states"]

    def attention(module, args, kw, output):
        if strategy == "attention_block":
            return torch.zeros_like(output)
        return kw["hidden_states"]  # attention_skip

    if strategy == "transformer_block":
        hooks = [block.register_forward_hook(skip_block, with_kwargs=True)]
    else:
        hooks = [
            attn.register_forward_hook(attention, with_kwargs=True)
            for attn in (block.attn1, block.audio_attn1)
        ]
    try:
        return _both(model, kwargs)
    finally:
        for hook in hooks:
            hook.remove()


def _pipeline() -> LTX2Pipeline:
    """An LTX2Pipeline of tiny random parts; the VAEs never run (latent output), they give the
    compression ratios (8 spatial, 4 temporal) and the latent statistics."""
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    )  # fmt: skip
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, num_res_blocks=1, latent_channels=2, mel_bins=8
    )  # packed audio latents: 2 channels × 2 mel bins = the transformer's 4 audio channels
    connectors = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=2, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
    )  # fmt: skip
    return LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), audio_vae=audio_vae.eval(),
        text_encoder=None, tokenizer=None, connectors=connectors.eval(), transformer=tiny_ltx2(),
        vocoder=None,
    )  # fmt: skip


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("index", [0, 1])  # block 0: no shared prefix to fork from
def test_stg_in_the_pipeline_equals_the_naive_third_pass_for_two_prompts(index, strategy):
    pipe = _pipeline()
    g = torch.Generator().manual_seed(0)
    # Gemma states of two layers (the connectors' input); the second prompt padded.
    prompts, negatives = torch.randn(2, 6, 32, generator=g), torch.randn(2, 6, 32, generator=g)
    mask = (torch.arange(6) < torch.tensor([[6], [4]])).long()

    def call():
        out = pipe(
            prompt_embeds=prompts, prompt_attention_mask=mask, negative_prompt_embeds=negatives,
            negative_prompt_attention_mask=mask, height=32, width=32, num_frames=9,
            frame_rate=25.0, num_inference_steps=2, guidance_scale=GUIDANCE,
            audio_guidance_scale=AUDIO_GUIDANCE, guidance_rescale=0.0, audio_guidance_rescale=0.0,
            # The pipeline's own STG and modality guidance off: slatte's STG is under test.
            stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
            output_type="latent", generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        return out.frames, out.audio

    plain = call()
    calls, guided = run_pipeline_with_stg(
        pipe, call, scale=SCALE, blocks=[index], strategy=strategy
    )
    assert len(calls) == 2
    for record in calls:
        assert record["kwargs"]["hidden_states"].shape == (4, 48, 4)  # rows: [u1, u2, c1, c2]
        plain_outputs = _both(pipe.transformer, record["kwargs"])
        perturbed = _perturbed(pipe.transformer, record["kwargs"], index, strategy)
        guidance = (GUIDANCE, AUDIO_GUIDANCE)
        for out, e, e_p, g in zip(
            record["outputs"], plain_outputs, perturbed, guidance, strict=True
        ):
            e[2:] = e[2:] + SCALE / g * (e[2:] - e_p[2:])
            torch.testing.assert_close(out, e, atol=1e-5, rtol=1e-5)
    for out, ref in zip(guided, plain, strict=True):
        assert out.shape == ref.shape and (out - ref).abs().max() > 1e-4
    for out, ref in zip(call(), plain, strict=True):
        torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_stg_on_a_bare_transformer_guides_the_chosen_rows_of_both_outputs():
    """`cond_rows`, no fork, the dict output: the other row and both outputs' batch unchanged."""
    model, inputs = tiny_ltx2(), model_inputs("ltx2")
    plain = _both(model, inputs)
    e_p = _perturbed(model, inputs, 1, "transformer_block")
    handle = enable_stg(model, scale=SCALE, blocks=[1], fork=False, cond_rows=lambda b: [1])
    with handle, torch.no_grad():
        out = model(**inputs)
    for got, e, p in zip((out.sample, out.audio_sample), plain, e_p, strict=True):
        assert got.shape == e.shape
        torch.testing.assert_close(got[0], e[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], e[1] + SCALE * (e[1] - p[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("own", [dict(stg_scale=1.0), dict(modality_scale=3.0)])
def test_stg_refuses_the_pipelines_own_guidance_passes(own):
    """LTX2Pipeline's own STG / modality passes are extra transformer calls that slatte's STG
    cannot tell from the CFG calls: refused with what to pass instead, never mis-scaled."""
    pipe = _pipeline()
    g = torch.Generator().manual_seed(0)
    prompts, negatives = torch.randn(1, 6, 32, generator=g), torch.randn(1, 6, 32, generator=g)
    mask = torch.ones(1, 6, dtype=torch.long)
    settings = dict(
        stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0
    )
    settings.update(own)
    handle = enable_stg(pipe, scale=SCALE, blocks=[1])
    with handle, pytest.raises(ValueError, match="stg_scale=0.0 and modality_scale=1.0"):
        pipe(
            prompt_embeds=prompts, prompt_attention_mask=mask, negative_prompt_embeds=negatives,
            negative_prompt_attention_mask=mask, height=32, width=32, num_frames=9,
            frame_rate=25.0, num_inference_steps=1, guidance_scale=GUIDANCE,
            spatio_temporal_guidance_blocks=[0], output_type="latent", **settings,
        )  # fmt: skip
