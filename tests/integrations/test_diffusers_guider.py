"""STGGuidance, slatte's STG guider on diffusers' BaseGuidance, driven as diffusers' modular
denoise loops drive a guider, on tiny random Wan and LTX transformers: the spec's formula against
a naive third pass for every strategy, forked == unforked, any attention backend, windows, and
no hooks left behind."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend
from diffusers.modular_pipelines.modular_pipeline import BlockState
from diffusers_testing import model_inputs, naive_perturbed, run, tiny_ltx, tiny_wan

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
