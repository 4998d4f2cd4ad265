"""HunyuanVideo and HunyuanVideo-1.5: SLA on the video-to-video part of their joint attention
(text exact, padded text masked), STG through their dual- and single-stream blocks, each checked
against a computation written here by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers_testing import (
    attention_inputs,
    model_inputs,
    randomize_projections,
    run,
    tiny_hunyuan,
    tiny_hunyuan15,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_common import execution_blocks
from slatte.integrations.diffusers_sla import (
    disable_sla,
    enable_sla,
    from_pretrained_sla,
    save_pretrained_sla,
)
from slatte.integrations.diffusers_stg import enable_stg
from slatte.ops import SLAConfig, sla_block_map

SMALL_BLOCKS = {"block_q": 16, "block_k": 16}
SCALE = 1.5
MODELS = {"hunyuan": tiny_hunyuan, "hunyuan15": tiny_hunyuan15}


def _by_hand(attn, x, enc, mask, rotary, config):
    """Softmax attention by hand: video queries over the critical video blocks (SLA's block
    map) and the real text keys, text queries over every real key. `mask`: HunyuanVideo's
    (B, 1, 1, N) key mask, or HunyuanVideo-1.5's (B, Nt) text mask, for keys and queries."""
    from diffusers.models.embeddings import apply_rotary_emb

    heads = attn.heads
    if attn.add_q_proj is None:
        joint = torch.cat([x, enc], 1)
        q, k, v = (p(joint).unflatten(2, (heads, -1)) for p in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
    else:
        q_v, k_v, v_v = (p(x).unflatten(2, (heads, -1)) for p in (attn.to_q, attn.to_k, attn.to_v))
        q_t, k_t, v_t = (
            p(enc).unflatten(2, (heads, -1)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )  # fmt: skip
        q = torch.cat([attn.norm_q(q_v), attn.norm_added_q(q_t)], 1)
        k = torch.cat([attn.norm_k(k_v), attn.norm_added_k(k_t)], 1)
        v = torch.cat([v_v, v_t], 1)
    nv = x.shape[1]
    q = torch.cat([apply_rotary_emb(q[:, :nv], rotary, sequence_dim=1), q[:, nv:]], 1)
    k = torch.cat([apply_rotary_emb(k[:, :nv], rotary, sequence_dim=1), k[:, nv:]], 1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    if mask.dim() == 2:  # 1.5: padded text tokens neither give nor take attention
        joint = torch.cat([torch.ones(mask.shape[0], nv, dtype=torch.bool), mask], 1)
        allowed = (joint[:, None, :, None] & joint[:, None, None, :]).repeat(1, heads, 1, 1)
    else:
        allowed = mask.reshape(mask.shape[0], 1, 1, -1).expand(-1, heads, q.shape[2], -1).clone()
    critical = sla_block_map(q[:, :, :nv], k[:, :, :nv], config) == 1
    video_keys = critical.repeat_interleave(16, 2).repeat_interleave(16, 3)[:, :, :nv, :nv]
    allowed[:, :, :nv, :nv] &= video_keys
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    out = out.transpose(1, 2).flatten(2)
    video, text = out[:, :nv], out[:, nv:]
    if attn.to_out is not None:
        video = attn.to_out[0](video)
    if getattr(attn, "to_add_out", None) is not None:
        text = attn.to_add_out(text)
    return video, text, critical


@pytest.mark.parametrize(
    ("name", "block_list"),
    [
        ("hunyuan", "transformer_blocks"),
        ("hunyuan", "single_transformer_blocks"),
        ("hunyuan15", "transformer_blocks"),
    ],
)
def test_zero_projection_is_softmax_over_critical_video_blocks_and_all_text(name, block_list):
    model, inputs = MODELS[name](), model_inputs(name)
    attn = getattr(model, block_list)[0].attn
    seen = attention_inputs(model, attn, inputs)
    x, enc, mask = seen["hidden_states"], seen["encoder_hidden_states"], seen["attention_mask"]
    assert not mask.all()  # the second prompt's padding reaches the attention
    config = SLAConfig(critical=1, negligible=1, **SMALL_BLOCKS)
    enable_sla(model, config)
    with torch.no_grad():
        video, text = attn(**seen)
        want_video, want_text, critical = _by_hand(
            attn, x, enc, mask, seen["image_rotary_emb"], config
        )
    assert critical.sum(-1).eq(1).all()  # 1 of 3 video key blocks: really sparse
    torch.testing.assert_close(video, want_video, atol=2e-5, rtol=1e-5)
    # Padded text queries of 1.5 attend to nothing: compare the real ones.
    real = mask.reshape(mask.shape[0], -1)[:, -text.shape[1] :] if mask.dim() == 2 else True
    real = torch.as_tensor(real).expand(text.shape[:2])
    torch.testing.assert_close(text[real], want_text[real], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padded_text_keys_take_no_weight(name):
    """Changing the padded text tokens of the second prompt changes nothing, with SLA on."""
    model, inputs = MODELS[name](), model_inputs(name)
    enable_sla(model, critical=0.5, **SMALL_BLOCKS)
    out = run(model, inputs)
    noisy = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
    noisy["encoder_hidden_states"][1, 4:] += 5.0
    torch.testing.assert_close(run(model, noisy), out, atol=1e-5, rtol=1e-5)


def test_projections_survive_save_and_load_and_disable_restores(tmp_path):
    model, inputs = tiny_hunyuan(), model_inputs("hunyuan")
    dense = run(model, inputs)
    enable_sla(model, critical=1, negligible=1, linear_scope="all", **SMALL_BLOCKS)
    randomize_projections(model)
    expected = run(model, inputs)
    assert (expected - dense).abs().max() > 1e-3
    save_pretrained_sla(model, tmp_path / "hunyuan_sla")
    loaded = from_pretrained_sla(tmp_path / "hunyuan_sla")
    names = [n for n, _ in loaded.named_parameters() if "proj_l.weight" in n]
    assert names == [
        "transformer_blocks.0.attn.sla.proj_l.weight",
        "single_transformer_blocks.0.attn.sla.proj_l.weight",
    ]
    torch.testing.assert_close(run(loaded, inputs), expected, atol=0, rtol=0)
    disable_sla(loaded)
    torch.testing.assert_close(run(loaded, inputs), dense, atol=0, rtol=0)


def _naive_perturbed(model, inputs, index, strategy):
    """A plain third pass with block `index` perturbed for every row, hooks written here."""
    block = execution_blocks(model)[index]

    def skip_block(module, args, kwargs, output):
        return args[0], args[1]  # both streams as they came in

    def attention(module, args, kwargs, output):
        x, enc = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        if strategy == "attention_block":
            return torch.zeros_like(output[0]), torch.zeros_like(output[1])
        if strategy == "attention_skip":
            return x, enc
        if module.add_q_proj is None:  # single stream: values of [x; enc], no projection
            return module.to_v(x), module.to_v(enc)
        return module.to_out[0](module.to_v(x)), module.to_add_out(module.add_v_proj(enc))

    if strategy == "transformer_block":
        handle = block.register_forward_hook(skip_block, with_kwargs=True)
    else:
        handle = block.attn.register_forward_hook(attention, with_kwargs=True)
    try:
        return run(model, inputs)
    finally:
        handle.remove()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("name", "index"), [("hunyuan", 0), ("hunyuan", 1), ("hunyuan15", 1)]
)  # HunyuanVideo: its dual-stream block, its single-stream block
def test_stg_equals_the_naive_third_pass_for_two_prompts(name, index, strategy):
    """HunyuanVideo's pipeline calls the transformer for the conditional batch of two prompts
    (guidance is distilled into the model)."""
    model, inputs = MODELS[name](), model_inputs(name)
    e_c = run(model, inputs)
    e_p = _naive_perturbed(model, inputs, index, strategy)
    expected = e_c + SCALE * (e_c - e_p)
    for fork in (True, False):
        with enable_stg(model, scale=SCALE, blocks=[index], strategy=strategy, fork=fork):
            guided = run(model, inputs)
        torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    assert (guided - e_c).abs().max() > 1e-3


def test_the_pipelines_distilled_guidance_is_not_taken_for_cfg():
    """HunyuanVideo's pipeline holds guidance_scale (6 by default) for the model's embedded
    guidance, not CFG: every row of its call is guided, with the full STG scale."""
    model = tiny_hunyuan()
    pipe = SimpleNamespace(transformer=model, guidance_scale=6.0)
    inputs = model_inputs("hunyuan")
    e_c = run(model, inputs)
    e_p = _naive_perturbed(model, inputs, 1, "transformer_block")
    with enable_stg(pipe, scale=SCALE, blocks=[1]):
        guided = run(model, inputs)
    torch.testing.assert_close(guided, e_c + SCALE * (e_c - e_p), atol=1e-5, rtol=1e-5)


def test_a_processor_installed_by_someone_else_is_refused():
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = tiny_hunyuan()
    model.single_transformer_blocks[0].attn.set_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match="block 1.*AttnProcessor2_0.*HunyuanVideoAttnProcessor2_0"):
        enable_sla(model)
    assert not any(hasattr(m, "sla") for m in model.modules())  # nothing half-enabled


def test_hunyuan15_guider_cfg_calls_guide_the_conditional_call_only():
    """HunyuanVideo-1.5's pipeline runs CFG through its guider: the conditional batch first,
    then the unconditional one, combined with `guider.guidance_scale`."""
    model, g = tiny_hunyuan15(), 4.0
    pipe = SimpleNamespace(transformer=model, guider=SimpleNamespace(guidance_scale=g))
    cond = model_inputs("hunyuan15", seed=1)
    uncond = {
        **cond,
        "encoder_hidden_states": model_inputs("hunyuan15", seed=2)["encoder_hidden_states"],
    }
    e_c, e_u = run(model, cond), run(model, uncond)
    e_p = _naive_perturbed(model, cond, 1, "transformer_block")
    with enable_stg(pipe, scale=SCALE, blocks=[1]):
        guided_c, guided_u = run(model, cond), run(model, uncond)
    torch.testing.assert_close(guided_u, e_u, atol=0, rtol=0)
    torch.testing.assert_close(guided_c, e_c + SCALE / g * (e_c - e_p), atol=1e-5, rtol=1e-5)


def test_hunyuan15_padded_text_tokens_come_out_as_the_models_own():
    """1.5 masks padded text tokens as queries too: with every block critical, SLA's
    processor gives every text token, padded ones included, what the model's own gives."""
    model, inputs = tiny_hunyuan15(), model_inputs("hunyuan15")
    attn = model.transformer_blocks[1].attn
    seen = attention_inputs(model, attn, inputs)
    with torch.no_grad():
        _, want = attn(**seen)
        enable_sla(model, critical=1.0, **SMALL_BLOCKS)
        _, text = attn(**seen)
    assert not seen["attention_mask"].all()
    torch.testing.assert_close(text, want, atol=2e-5, rtol=1e-5)
