"""STGGuidance, slatte's STG guider on diffusers' BaseGuidance, driven as diffusers' modular
denoise loops drive a guider, on tiny random Wan and LTX transformers: the spec's formula against
a naive third pass for every strategy, forked == unforked, any attention backend, windows, and
no hooks left behind."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend
from diffusers.modular_pipelines.modular_pipeline import BlockState
from diffusers_testing import (
    model_inputs,
    naive_perturbed,
    naive_perturbed_blocks,
    run,
    tiny_ltx,
    tiny_wan,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_guider import STGGuidance

G, S = 3.0, 1.5
MODELS = {"wan": tiny_wan, "ltx": tiny_ltx}


def _inputs(name):
    """The conditional and unconditional inputs of one step: same latents and timestep,
    different text states."""
    cond, uncond = model_inputs(name, seed=1), model_inputs(name, seed=2)
    uncond["hidden_states"], uncond["timestep"] = cond["hidden_states"], cond["timestep"]
    return cond, uncond


def _denoise_step(guider, model, cond, uncond, step=0, num_steps=10):
    """One step of a modular denoise loop (diffusers' `WanLoopDenoiser`): a batch per condition,
    the guider preparing and cleaning the model around each forward."""
    guider.set_state(step=step, num_inference_steps=num_steps, timestep=cond["timestep"])
    fields = {"encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds")}
    state = BlockState(
        prompt_embeds=cond["encoder_hidden_states"],
        negative_prompt_embeds=uncond["encoder_hidden_states"],
    )
    batches = guider.prepare_inputs_from_block_state(state, fields)
    shared = {k: v for k, v in cond.items() if k != "encoder_hidden_states"}
    for batch in batches:
        guider.prepare_models(model)
        with torch.no_grad():
            batch.noise_pred = model(
                **shared, encoder_hidden_states=batch.encoder_hidden_states, return_dict=False
            )[0]
        guider.cleanup_models(model)
    return guider(batches)[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_guider_gives_the_spec_formula_for_every_strategy(name, strategy):
    model = MODELS[name]()
    cond, uncond = _inputs(name)
    before = run(model, cond)
    guider = STGGuidance(guidance_scale=G, stg_scale=S, stg_blocks=[1], stg_strategy=strategy)
    pred = _denoise_step(guider, model, cond, uncond)
    e_c, e_u = run(model, cond), run(model, uncond)
    e_p = naive_perturbed(model, cond, 1, strategy)
    expected = e_u + G * (e_c - e_u) + S * (e_c - e_p)
    torch.testing.assert_close(pred, expected, atol=1e-5, rtol=1e-5)
    assert (pred - (e_u + G * (e_c - e_u))).abs().amax() > 1e-3  # STG was applied
    # Nothing outlives the step: the model predicts as before.
    torch.testing.assert_close(run(model, cond), before, atol=0, rtol=0)
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_forked_equals_unforked_and_runs_the_prefix_once():
    model = tiny_wan()
    cond, uncond = _inputs("wan")
    rows = []
    # The rows block 0 computes (its output; the STG hooks trim its inputs before it runs).
    handle = model.blocks[0].register_forward_hook(
        lambda module, args, output: rows.append(output.shape[0])
    )
    try:
        preds = {}
        for fork in (True, False):
            rows.clear()
            guider = STGGuidance(guidance_scale=G, stg_scale=S, stg_blocks=1, fork=fork)
            preds[fork] = _denoise_step(guider, model, cond, uncond)
            # Block 0 per batch: forked, the conditional batch's 2 rows only; unforked, 2 + 2.
            assert rows == ([2, 2] if fork else [4, 2])
    finally:
        handle.remove()
    torch.testing.assert_close(preds[True], preds[False], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["attention_block", "attention_skip", "attention_values"])
def test_attention_strategies_work_with_a_non_sdpa_backend(strategy):
    model = tiny_wan()
    cond, uncond = _inputs("wan")
    guider = STGGuidance(guidance_scale=G, stg_scale=S, stg_blocks=[1], stg_strategy=strategy)
    sdpa = _denoise_step(guider, model, cond, uncond)
    # set_attention_backend also sets diffusers' global active backend, which
    # reset_attention_backend leaves as it is; the context manager restores it for later tests.
    with attention_backend("flex"):
        model.set_attention_backend("flex")
        try:
            flex = _denoise_step(guider, model, cond, uncond)
            cfg_off = STGGuidance(guidance_scale=G, stg_scale=0.0, stg_blocks=[1])
            cfg_only = _denoise_step(cfg_off, model, cond, uncond)
        finally:
            model.reset_attention_backend()
    torch.testing.assert_close(flex, sdpa, atol=1e-4, rtol=1e-4)
    assert (flex - cfg_only).abs().amax() > 1e-3  # not silently a no-op


def test_windows_and_switches():
    model = tiny_wan()
    cond, uncond = _inputs("wan")
    e_c, e_u = run(model, cond), run(model, uncond)
    cfg_only = e_u + G * (e_c - e_u)
    # Outside the STG window: CFG alone, and the conditional batch runs without hooks.
    late = STGGuidance(guidance_scale=G, stg_scale=S, stg_blocks=[1], stg_start=0.5)
    torch.testing.assert_close(_denoise_step(late, model, cond, uncond, step=2), cfg_only)
    assert (_denoise_step(late, model, cond, uncond, step=5) - cfg_only).abs().amax() > 1e-3
    # CFG off (scale 1): one batch; STG alone on the conditional prediction.
    no_cfg = STGGuidance(guidance_scale=1.0, stg_scale=S, stg_blocks=[1])
    no_cfg.set_state(step=0, num_inference_steps=10, timestep=cond["timestep"])
    assert no_cfg.num_conditions == 1
    e_p = naive_perturbed(model, cond, 1, "transformer_block")
    pred = _denoise_step(no_cfg, model, cond, uncond)
    torch.testing.assert_close(pred, e_c + S * (e_c - e_p), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "stg_blocks is required"),
        ({"stg_blocks": [1], "stg_strategy": "skip"}, r"stg_strategy must be one of .*'skip'"),
        ({"stg_blocks": [1], "stg_scale": -1.0}, r"stg_scale must be >= 0, got -1\.0"),
        ({"stg_blocks": [1], "stg_start": 0.6, "stg_stop": 0.2}, r"start=0\.6, stop=0\.2"),
        ({"stg_blocks": [-1]}, r"stg_blocks must be one or more block indices >= 0"),
        (
            {"stg_blocks": [0, 1], "stg_strategy": ["attention_values"]},
            r"one per block \(2 for blocks \(0, 1\)\), got \['attention_values'\]",
        ),
        ({"stg_blocks": [1], "stg_adaptive": 0.0}, r"stg_adaptive must be > 0, got 0\.0"),
        (
            {"stg_blocks": [1], "stg_adaptive": 0.5, "guidance_scale": 1.0},
            "guidance_scale is 1 \\(no CFG\\)",
        ),
        (
            {"stg_blocks": [1], "stg_adaptive": 0.5, "stop": 0.5},
            r"\(stg_start, stg_stop\) = \(0\.0, 1\.0\) must lie within the CFG window",
        ),
        (
            {"stg_blocks": [1], "stg_adaptive_schedule": "linear"},
            r"stg_adaptive_schedule must be one of \('constant', 'decay', 'rise'\), got 'linear'",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STGGuidance(**kwargs)


def test_forward_without_the_conditional_pass_says_what_is_missing():
    guider = STGGuidance(guidance_scale=G, stg_scale=S, stg_blocks=[1])
    guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor([5]))
    pred = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="no perturbed prediction .* call prepare_models"):
        guider.forward(pred, pred)


def _modular_wan(model, guider):
    """A Wan modular pipeline's denoise part (text encoding and decoding need downloaded
    weights), with `guider`."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import WanBlocks

    pipe = WanBlocks().sub_blocks["denoise"].init_pipeline()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.update_components(transformer=model, scheduler=scheduler, guider=guider)
    return pipe


def test_adaptive_per_depth_guider_in_a_modular_wan_pipeline():
    """Per-depth strategies (block 0 skipped whole, identity attention map at block 1, one
    branch) with the adaptive scale on its `decay` schedule, against the whole denoise loop
    written out by hand: the adaptive weight from its definition, per sample and step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = tiny_wan()
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    latents = torch.randn(2, 4, 2, 8, 8, generator=g)  # 5 frames of 64 × 64 px
    steps, ratio, cap = 3, 0.4, 0.7
    guider = STGGuidance(
        guidance_scale=G, stg_scale=cap, stg_blocks=[1, 0],
        stg_strategy=["attention_values", "transformer_block"], stg_adaptive=ratio,
        stg_adaptive_schedule="decay",
    )  # fmt: skip
    out = _modular_wan(model, guider)(
        latents=latents.clone(), prompt_embeds=prompt, negative_prompt_embeds=negative,
        num_frames=5, height=64, width=64, num_inference_steps=steps, output="latents",
    )  # fmt: skip

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    x, weights = latents, []
    for i, t in enumerate(scheduler.timesteps):
        inputs = {"hidden_states": x, "timestep": t.expand(2).float()}
        cond = {**inputs, "encoder_hidden_states": prompt}
        e_c, e_u = run(model, cond), run(model, {**inputs, "encoder_hidden_states": negative})
        e_p = naive_perturbed_blocks(model, cond, {0: "transformer_block", 1: "attention_values"})
        norm_cfg = (G * (e_c - e_u)).flatten(1).norm(dim=1)
        norm_stg = (e_c - e_p).flatten(1).norm(dim=1)
        w = (ratio * (1 - i / steps) * norm_cfg / norm_stg).clamp(max=cap)
        weights.append(w)
        pred = e_u + G * (e_c - e_u) + w.view(2, 1, 1, 1, 1) * (e_c - e_p)
        x = scheduler.step(pred, t, x, return_dict=False)[0]
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    weights = torch.stack(weights)
    # The weights move per sample and step, and the cap binds somewhere but not everywhere.
    assert (weights[:, 0] - weights[:, 1]).abs().amax() > 1e-3
    assert (weights == cap).any() and (weights < cap - 1e-3).any()
