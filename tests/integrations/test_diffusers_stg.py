"""STG through hooks on tiny random diffusers transformers: equal to the naive third pass and to
diffusers' own SkipLayerGuidance, batch-safe, and fully removable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers_testing import (
    model_inputs,
    naive_perturbed,
    naive_perturbed_blocks,
    tiny_latte,
    tiny_ltx,
    tiny_wan,
)

from slatte.guidance.strategies import STRATEGIES
from slatte.integrations import diffusers_common
from slatte.integrations.diffusers_common import ModelSpec
from slatte.integrations.diffusers_qk import no_rotary_qk
from slatte.integrations.diffusers_stg import disable_stg, enable_stg, perturbed_pass

SCALE = 1.5
# STG needs no long sequences: Latte in 2×2 patches keeps these tests fast.
MODELS = {"wan": tiny_wan, "ltx": tiny_ltx, "latte": lambda: tiny_latte(patch_size=2)}


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stg_equals_the_naive_third_pass(name, strategy):
    model, inputs = MODELS[name](), model_inputs(name)
    index = 1  # Wan/LTX: the second block (block 0 is the shared prefix); Latte: temporal 0
    e_c = _run(model, inputs)
    e_p = naive_perturbed(model, inputs, index, strategy)
    expected = e_c + SCALE * (e_c - e_p)
    if name == "latte":  # learned sigma: only the mean channels are guided
        expected[:, 4:] = e_c[:, 4:]
    # Latte never forks (its blocks fold frames into the batch), so one run covers it.
    for fork in (True, False) if name != "latte" else (True,):
        with enable_stg(model, scale=SCALE, blocks=[index], strategy=strategy, fork=fork):
            guided = _run(model, inputs)
        torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    # Every strategy changes a random model's prediction.
    assert (guided - e_c).abs().max() > 1e-3


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["wan", "latte"])
def test_perturbed_pass_returns_the_naive_third_pass(name, strategy):
    model, inputs = MODELS[name](), model_inputs(name)
    expected = naive_perturbed(model, inputs, 1, strategy)
    with perturbed_pass(model, blocks=[1], strategy=strategy):
        e_p = _run(model, inputs)
    torch.testing.assert_close(e_p, expected, atol=1e-5, rtol=1e-5)
    assert (e_p - _run(model, inputs)).abs().amax() > 1e-3  # perturbed, and undone after
    assert not model._forward_hooks and not model._forward_pre_hooks


@pytest.mark.parametrize("name", ["wan", "latte"])
def test_per_depth_strategies_in_one_branch(name):
    """One strategy per block (whole block skipped at one, identity attention map at the
    other), given in any order: the naive pass with both perturbations at once."""
    model, inputs = MODELS[name](), model_inputs(name)
    e_c = _run(model, inputs)
    e_p = naive_perturbed_blocks(model, inputs, {0: "attention_values", 1: "transformer_block"})
    expected = e_c + SCALE * (e_c - e_p)
    if name == "latte":  # learned sigma: only the mean channels are guided
        expected[:, 4:] = e_c[:, 4:]
    strategy = ["transformer_block", "attention_values"]
    with enable_stg(model, scale=SCALE, blocks=[1, 0], strategy=strategy):
        guided = _run(model, inputs)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"one per block \(2 for blocks \(1, 0\)\)"):
        enable_stg(model, blocks=[1, 0], strategy=["attention_values"])
    assert not model._forward_hooks  # the refused call installed nothing


def test_stg_is_batch_safe_and_only_guides_the_conditional_rows():
    model = tiny_wan()
    inputs = model_inputs("wan", batch=3)
    rows = [[r] for r in range(3)]
    singles = []
    for r in rows:
        one = {k: v[r] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with enable_stg(model, scale=SCALE, blocks=[1, 0], strategy="attention_values"):
            singles.append(_run(model, one))
    with enable_stg(model, scale=SCALE, blocks=[1, 0], strategy="attention_values"):
        batched = _run(model, inputs)
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)
    plain = _run(model, inputs)
    with enable_stg(model, scale=SCALE, blocks=[1], cond_rows=lambda b: [b - 1]):
        partial = _run(model, inputs)
    torch.testing.assert_close(partial[:2], plain[:2], atol=1e-5, rtol=1e-5)
    assert (partial[2] - plain[2]).abs().max() > 1e-3


def test_batched_cfg_pipeline_matches_diffusers_skip_layer_guidance():
    """LTX-style pipeline: batch [uncond; cond], CFG applied by the pipeline after the call."""
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.layer_skip import LayerSkipConfig, _apply_layer_skip_hook

    model, g, s = tiny_ltx(), 3.0, 2.0
    cond, uncond = model_inputs("ltx", seed=1), model_inputs("ltx", seed=2)
    uncond["hidden_states"] = cond["hidden_states"]
    uncond["timestep"] = cond["timestep"]
    batch = {
        k: torch.cat([uncond[k], v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()
    }
    pipe = SimpleNamespace(transformer=model, do_classifier_free_guidance=True, guidance_scale=g)
    with enable_stg(pipe, scale=s, blocks=[1]):
        e_u, e_c = _run(model, batch).chunk(2)
    ours = e_u + g * (e_c - e_u)  # what the pipeline does with the transformer's output

    guider = SkipLayerGuidance(
        guidance_scale=g,
        skip_layer_guidance_scale=s,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        skip_layer_guidance_layers=[1],
    )
    # diffusers' window is open strictly after the start step, so use step 1 of 10.
    guider.set_state(step=1, num_inference_steps=10, timestep=cond["timestep"])
    assert guider._is_slg_enabled()
    pred_cond, pred_uncond = _run(model, cond), _run(model, uncond)
    _apply_layer_skip_hook(model, LayerSkipConfig([1], fqn="transformer_blocks"), name="slg")
    pred_skip = _run(model, cond)
    HookRegistry.check_if_exists_or_initialize(model).remove_hook("slg", recurse=True)
    theirs = guider.forward(pred_cond, pred_uncond, pred_skip).pred
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_separate_cfg_calls_guide_only_the_conditional_call():
    """Wan-style pipeline: conditional call first, then the unconditional one (same timestep)."""
    model, g = tiny_wan(), 4.0
    pipe = SimpleNamespace(transformer=model, do_classifier_free_guidance=True, guidance_scale=g)
    cond = model_inputs("wan", seed=1)
    uncond = {**cond, "encoder_hidden_states": model_inputs("wan", seed=2)["encoder_hidden_states"]}
    for step in range(2):  # the second step (new timestep) must be guided again
        cond["timestep"] = uncond["timestep"] = cond["timestep"] + step
        e_c, e_u = _run(model, cond), _run(model, uncond)
        e_p = naive_perturbed(model, cond, 1, "transformer_block")
        with enable_stg(pipe, scale=SCALE, blocks=[1]):
            guided_c, guided_u = _run(model, cond), _run(model, uncond)
        torch.testing.assert_close(guided_u, e_u, atol=0, rtol=0)
        combined = e_u + g * (guided_c - e_u)
        expected = e_u + g * (e_c - e_u) + SCALE * (e_c - e_p)
        torch.testing.assert_close(combined, expected, atol=1e-4, rtol=1e-5)


def test_step_window_limits_which_rows_are_guided():
    model = tiny_wan()
    inputs = model_inputs("wan", batch=2)
    inputs["timestep"] = torch.tensor([900, 100])  # progress 0.1 and 0.9 on a 0..999 schedule
    plain = _run(model, inputs)
    with enable_stg(model, scale=SCALE, blocks=[1], start=0.0, stop=0.5):
        early = _run(model, inputs)
    assert (early[0] - plain[0]).abs().max() > 1e-3
    torch.testing.assert_close(early[1], plain[1], atol=1e-5, rtol=1e-5)
    with enable_stg(model, scale=SCALE, blocks=[1], start=0.95, stop=1.0):
        torch.testing.assert_close(_run(model, inputs), plain, atol=0, rtol=0)


def test_hooks_are_removed_even_after_an_error():
    model = tiny_wan()
    inputs = model_inputs("wan")
    plain = _run(model, inputs)

    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    with pytest.raises(RuntimeError), enable_stg(model, scale=SCALE, blocks=[1]):
        model(**{**inputs, "hidden_states": inputs["hidden_states"][:, :3]})
    assert hook_count() == 0
    torch.testing.assert_close(_run(model, inputs), plain, atol=0, rtol=0)
    handle = enable_stg(model, scale=SCALE, blocks=[0])
    with pytest.raises(ValueError, match="already enabled"):
        enable_stg(model, scale=SCALE, blocks=[1])
    handle.remove()
    assert hook_count() == 0


def test_bad_arguments():
    model = tiny_wan()
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        enable_stg(model, blocks=[2])
    with pytest.raises(ValueError, match="stg strategy must be one of .*, got 'residual'"):
        enable_stg(model, blocks=[0], strategy="residual")
    with pytest.raises(ValueError, match="unsupported transformer class"):
        enable_stg(torch.nn.Linear(2, 2), blocks=[0])
    with pytest.raises(ValueError, match="stg window"):
        enable_stg(model, blocks=[0], start=0.5, stop=0.5)


class _ToyBlock(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return hidden_states + torch.tanh(self.proj(hidden_states)) * temb[:, None]


class ToyTransformer(torch.nn.Module):
    """Blocks scaled by `layer_scale` (one entry per block, as Wan-VACE's control scale): an
    input shared by the whole batch, whatever its length."""

    def __init__(self, dim: int = 8, depth: int = 2):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_ToyBlock(dim) for _ in range(depth))

    def forward(self, hidden_states, timestep, layer_scale):
        if layer_scale.shape != (len(self.blocks),):
            raise ValueError(f"layer_scale must have one entry per block, got {layer_scale.shape}")
        temb = timestep.float()[:, None] / 1000  # (B, 1)
        for block, scale in zip(self.blocks, layer_scale, strict=True):
            hidden_states = scale * block(hidden_states, temb)
        return (hidden_states,)


TOY_SPEC = ModelSpec(
    block_lists=("blocks",),
    qk=no_rotary_qk,
    processors=(),
    sample_inputs=("hidden_states", "timestep"),
    fork_inputs=("hidden_states", "temb"),
    batched_cfg=True,
)


def test_only_the_inputs_the_spec_names_are_per_sample(monkeypatch):
    """A shared input whose length happens to equal the batch is not given perturbed rows."""
    monkeypatch.setitem(diffusers_common.SUPPORTED, "ToyTransformer", TOY_SPEC)
    torch.manual_seed(0)
    model = ToyTransformer()
    args = (torch.randn(2, 5, 8), torch.tensor([100, 700]), torch.tensor([0.5, 2.0]))
    e_c = _run_toy(model, args)
    handle = model.blocks[1].register_forward_hook(lambda m, a, out: a[0])
    e_p = _run_toy(model, args)
    handle.remove()
    for fork in (True, False):
        with enable_stg(model, scale=SCALE, blocks=[1], fork=fork):
            guided = _run_toy(model, args)  # positional: named through forward's signature
        torch.testing.assert_close(guided, e_c + SCALE * (e_c - e_p), atol=1e-6, rtol=1e-6)
    assert (e_c - e_p).abs().max() > 1e-3


def _run_toy(model, args):
    with torch.no_grad():
        return model(*args)[0]


def test_disable_stg_removes_the_hooks_of_a_pipeline():
    model = tiny_wan()
    pipe = SimpleNamespace(transformer=model, do_classifier_free_guidance=False)
    inputs = model_inputs("wan")
    plain = _run(model, inputs)
    enable_stg(pipe, scale=SCALE, blocks=[1])
    assert (_run(model, inputs) - plain).abs().max() > 1e-3
    disable_stg(pipe)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    torch.testing.assert_close(_run(model, inputs), plain, atol=0, rtol=0)
    enable_stg(model, scale=SCALE, blocks=[0]).remove()  # it can be enabled again
    disable_stg(model)  # nothing to remove: no error
