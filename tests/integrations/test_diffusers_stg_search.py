"""The STG search on diffusers: the signal on a tiny random Wan transformer against plain forward
passes, the inputs recorded from Wan (separate CFG calls), Wan2.2 (two experts, each searched on
the steps it runs) and LTX-Video (one [uncond; cond] batch) pipelines, and `slatte stg-search`
on saved tiny Wan and Wan2.2 pipelines writing guider configs that STGGuidance and enable_stg
read."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers_testing import (
    model_inputs,
    naive_perturbed,
    run,
    run_pipeline_with_stg,
    tiny_ltx,
    tiny_wan,
    tiny_wan22_pipeline,
)

from slatte.cli import main
from slatte.guidance.strategies import STRATEGIES
from slatte.integrations.diffusers_guider import STGGuidance
from slatte.integrations.diffusers_stg import enable_stg
from slatte.integrations.diffusers_stg_search import (
    SECOND_GUIDER,
    GuidanceInputs,
    diffusers_perturbation_signals,
    diffusers_stg_search,
    record_guidance_inputs,
    write_guider_config,
)

pytest.importorskip("transformers")  # diffusers' Wan / LTX pipelines import it
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, WanPipeline  # noqa: E402

G = 3.0


def _wan_pipeline():
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_wan(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip


def _wan22_pipeline():
    """Two experts; at 5 steps the timesteps are 1000, 900, 751, 503, 9, so with the boundary at
    800 the high-noise expert runs steps 0 and 1, the low-noise one steps 2, 3 and 4."""
    return tiny_wan22_pipeline(0.8)


def _embeds(batch=2, dim=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 5, dim, generator=g), torch.randn(batch, 5, dim, generator=g)


def _step(seed):
    cond, uncond = model_inputs("wan", seed=seed), model_inputs("wan", seed=seed + 10)
    uncond["hidden_states"], uncond["timestep"] = cond["hidden_states"], cond["timestep"]
    return GuidanceInputs(cond=cond, uncond=uncond)


def test_signal_matches_plain_forward_passes_and_ranks_by_alignment():
    model = tiny_wan()
    steps = [_step(1), _step(2)]
    candidates = diffusers_perturbation_signals(model, steps)
    assert {(c.block, c.strategy) for c in candidates} == {
        (b, s) for b in range(2) for s in STRATEGIES
    }
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)  # every pair measured, none a copy of another
    _assert_hand_signal(model, steps, candidates)
    assert not model._forward_hooks and not model._forward_pre_hooks


def _assert_hand_signal(model, steps, candidates):
    """Each candidate's size and alignment equal the signal computed by hand from plain forwards
    of `model` on `steps` (`GuidanceInputs`, or (cond, uncond) keyword dicts)."""
    for c in candidates:
        sizes, cosines = [], []
        for cond, uncond in (
            (s.cond, s.uncond) if isinstance(s, GuidanceInputs) else s for s in steps
        ):
            cond, uncond = {**cond, "return_dict": True}, {**uncond, "return_dict": True}
            e_c = run(model, cond).flatten(1).double()
            e_u = run(model, uncond).flatten(1).double()
            e_p = naive_perturbed(model, cond, c.block, c.strategy).flatten(1).double()
            sizes.append((e_c - e_p).norm(dim=1) / (e_c - e_u).norm(dim=1))
            cosines.append(torch.nn.functional.cosine_similarity(e_c - e_p, e_c - e_u, dim=1))
        assert c.size == pytest.approx(torch.cat(sizes).mean().item(), rel=1e-4)
        assert c.alignment == pytest.approx(torch.cat(cosines).mean().item(), abs=1e-4)
        assert c.score == -c.alignment


def test_signal_bad_input():
    model = tiny_wan()
    with pytest.raises(ValueError, match=r"blocks must lie in 0\.\.1, got 2"):
        diffusers_perturbation_signals(model, [_step(1)], blocks=[2])
    with pytest.raises(ValueError, match=r"stg strategy must be one of .*'skip'"):
        diffusers_perturbation_signals(model, [_step(1)], strategies=["skip"])
    with pytest.raises(ValueError, match="at least one step's inputs"):
        diffusers_perturbation_signals(model, [])


def test_recorded_wan_inputs_are_the_pipelines_conditional_and_unconditional_calls():
    pipe = _wan_pipeline()
    prompt, negative = _embeds()
    seen = []  # every call's (latents, timestep, text) in order, recorded independently
    names = ("hidden_states", "timestep", "encoder_hidden_states")

    def see(module, args, kwargs):
        seen.append({n: (kwargs[n].clone(), kwargs[n].data_ptr()) for n in names})

    handle = pipe.transformer.register_forward_pre_hook(see, with_kwargs=True)
    try:
        (inputs,) = record_guidance_inputs(
            pipe, num_inference_steps=5, guidance_scale=G, progress=(0.1, 0.4, 0.7),
            prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=5, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    finally:
        handle.remove()
    assert len(seen) == 10  # 5 steps × (cond, uncond)
    assert len(inputs) == 3  # steps 0, 2 and 4 (progress × 5, rounded)
    for step, recorded in zip((0, 2, 4), inputs, strict=True):
        for got, call in ((recorded.cond, seen[2 * step]), (recorded.uncond, seen[2 * step + 1])):
            for name, (value, pointer) in call.items():
                torch.testing.assert_close(got[name], value, atol=0, rtol=0)
                assert got[name].data_ptr() != pointer  # a copy, whatever the pipeline does
        torch.testing.assert_close(recorded.cond["encoder_hidden_states"], prompt)
        torch.testing.assert_close(recorded.uncond["encoder_hidden_states"], negative)
    assert not pipe.transformer._forward_pre_hooks
    with pytest.raises(ValueError, match="give guidance_scale > 1, got 1.0"):
        record_guidance_inputs(pipe, num_inference_steps=2, guidance_scale=1.0)


def _see_calls(pipe):
    """Pre-hooks on both experts recording every call's (expert, kwargs) in order, independently
    of the recorder; returns (calls, handles)."""
    seen = []

    def see(module, args, kwargs):
        seen.append(
            (module, {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        )

    experts = (pipe.transformer, pipe.transformer_2)
    return seen, [e.register_forward_pre_hook(see, with_kwargs=True) for e in experts]


def test_wan22_recorded_inputs_go_to_the_expert_that_ran_each_step():
    pipe = _wan22_pipeline()
    prompt, negative = _embeds()
    call = dict(
        prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
        num_frames=5, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    seen, handles = _see_calls(pipe)
    try:  # progress 0.1, 0.4, 0.7 of 5 steps: steps 0, 2 and 4
        high, low = record_guidance_inputs(pipe, num_inference_steps=5, guidance_scale=G, **call)
    finally:
        for handle in handles:
            handle.remove()
    assert [model for model, _ in seen] == [pipe.transformer] * 4 + [pipe.transformer_2] * 6
    for recorded, steps in ((high, (0,)), (low, (2, 4))):
        assert len(recorded) == len(steps)
        for step, inputs in zip(steps, recorded, strict=True):
            for got, (_, kwargs) in (
                (inputs.cond, seen[2 * step]),
                (inputs.uncond, seen[2 * step + 1]),
            ):
                for name in ("hidden_states", "timestep", "encoder_hidden_states"):
                    torch.testing.assert_close(got[name], kwargs[name], atol=0, rtol=0)
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer_2._forward_pre_hooks
    with pytest.raises(
        ValueError, match=r"step of transformer_2, which ran steps \[2, 3, 4\] of the 5"
    ):
        record_guidance_inputs(
            pipe, num_inference_steps=5, guidance_scale=G, progress=(0.1, 0.2), **call
        )  # fmt: skip


def test_wan22_search_ranks_each_expert_on_its_steps_and_its_choices_apply(tmp_path):
    pipe = _wan22_pipeline()
    prompt, negative = _embeds()
    call = dict(
        prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16,
        num_frames=5, guidance_scale_2=2.0,
    )  # fmt: skip
    seen, handles = _see_calls(pipe)
    try:
        result = diffusers_stg_search(
            pipe, num_inference_steps=5, guidance_scale=G,
            generator=torch.Generator().manual_seed(0), **call,
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    # Each expert's ranking is the signal by hand on its own steps' calls (0; 2 and 4).
    for model, candidates, steps in (
        (pipe.transformer, result.candidates, (0,)),
        (pipe.transformer_2, result.candidates_2, (2, 4)),
    ):
        assert len(candidates) == 2 * len(STRATEGIES)
        pairs = [(seen[2 * step][1], seen[2 * step + 1][1]) for step in steps]
        assert all(seen[2 * step][0] is model for step in steps)
        _assert_hand_signal(model, pairs, candidates)
    report = result.to_dict()
    assert report["candidates_2"][0] == result.candidates_2[0].to_dict()
    # Written as diffusers' guider configs (the second in the modular pipelines' `guider_2`),
    # read back, applied to each expert by enable_stg.
    write_guider_config(result.chosen, tmp_path)
    write_guider_config(result.chosen_2, tmp_path / SECOND_GUIDER)
    guiders = [
        STGGuidance.from_pretrained(tmp_path),
        STGGuidance.from_pretrained(tmp_path, subfolder="guider_2"),
    ]
    for guider, candidates, scale in zip(
        guiders, (result.candidates, result.candidates_2), (G, 2.0), strict=True
    ):
        top = candidates[0]
        assert (list(guider.stg_blocks), guider.stg_strategy) == ([top.block], top.strategy)
        assert (guider.guidance_scale, guider.stg_scale) == (scale, 1.0)
    first, second = guiders
    calls, _ = run_pipeline_with_stg(
        pipe,
        lambda: pipe(
            num_inference_steps=2, guidance_scale=G, output_type="latent",
            generator=torch.Generator().manual_seed(0), **call,
        ),
        scale=first.stg_scale, blocks=list(first.stg_blocks), strategy=first.stg_strategy,
        scale_2=second.stg_scale, blocks_2=list(second.stg_blocks),
        strategy_2=second.stg_strategy,
    )  # fmt: skip
    terms = {pipe.transformer: (first, G), pipe.transformer_2: (second, 2.0)}
    assert [record["model"] for record in calls] == [pipe.transformer] * 2 + [
        pipe.transformer_2
    ] * 2
    for i, record in enumerate(calls):
        model, kwargs = record["model"], {**record["kwargs"], "return_dict": True}
        e = run(model, kwargs)
        if i % 2 == 0:  # the conditional call: STG with this expert's choice, its CFG scale
            guider, g = terms[model]
            e_p = naive_perturbed(model, kwargs, guider.stg_blocks[0], guider.stg_strategy)
            e = e + guider.stg_scale / g * (e - e_p)
        torch.testing.assert_close(record["output"], e, atol=1e-5, rtol=1e-5)


def test_recorded_ltx_inputs_split_the_batched_cfg_call():
    pipe = LTXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=tiny_ltx(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    prompt, negative = _embeds(batch=1, dim=16)
    mask = torch.ones(1, 5)
    ((step,),) = record_guidance_inputs(
        pipe, num_inference_steps=2, guidance_scale=G, progress=(0.9,), prompt_embeds=prompt,
        prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=mask, height=64, width=64, num_frames=9,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    # The pipeline batches [uncond; cond]: one row each, the same latents, its own text.
    torch.testing.assert_close(step.cond["encoder_hidden_states"], prompt)
    torch.testing.assert_close(step.uncond["encoder_hidden_states"], negative)
    torch.testing.assert_close(step.cond["hidden_states"], step.uncond["hidden_states"])
    assert step.cond["hidden_states"].shape[0] == 1
    assert (step.cond["num_frames"], step.cond["height"]) == (2, 2)  # shared: latent sizes
    candidates = diffusers_perturbation_signals(pipe.transformer, [step], blocks=[1])
    assert {c.block for c in candidates} == {1}


def test_search_on_a_wan_pipeline_writes_a_guider_config_the_guider_and_enable_stg_read(tmp_path):
    pipe = _wan_pipeline()
    prompt, negative = _embeds()
    result = diffusers_stg_search(
        pipe, num_inference_steps=3, guidance_scale=G, prompt_embeds=prompt,
        negative_prompt_embeds=negative, height=16, width=16, num_frames=5,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    top = result.candidates[0]
    assert len(result.candidates) == 2 * len(STRATEGIES)
    assert set(result.seconds) == {"record", "signal"}
    path = write_guider_config(result.chosen, tmp_path)
    assert path == tmp_path / "guider_config.json"
    written = json.loads(path.read_text())
    assert (written["stg_blocks"], written["stg_strategy"]) == ([top.block], top.strategy)
    assert (written["guidance_scale"], written["stg_scale"], written["guidance_rescale"]) == (
        G, 1.0, 0.7
    )  # fmt: skip
    guider = STGGuidance.from_pretrained(tmp_path)
    assert (list(guider.stg_blocks), guider.stg_strategy) == ([top.block], top.strategy)
    with enable_stg(
        pipe, scale=written["stg_scale"], blocks=written["stg_blocks"],
        strategy=written["stg_strategy"],
    ) as handle:  # fmt: skip
        assert handle.blocks == (top.block,)
        assert handle.strategies == (STRATEGIES[top.strategy],)


def _save_tiny_wan_pipeline(path, two_experts=False):
    """A tiny Wan pipeline with a word-level tokenizer and a random UMT5 encoder, made here
    (`two_experts`: Wan2.2's, as `_wan22_pipeline`)."""
    from diffusers import AutoencoderKLWan
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["[PAD]", "[UNK]", "a", "cat", "dog", "runs", "jumps"]
    tokens = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokens.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokens, pad_token="[PAD]", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8,
        )
    ).eval()  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip
    second = dict(transformer_2=tiny_wan(seed=1), boundary_ratio=0.8) if two_experts else {}
    WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=tiny_wan(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **second,
    ).save_pretrained(path)  # fmt: skip
    return path


def test_cli_searches_a_diffusers_pipeline_directory(tmp_path, capsys):
    pipeline = _save_tiny_wan_pipeline(tmp_path / "pipe")
    out = tmp_path / "search"
    argv = [
        "stg-search", str(pipeline), "--out", str(out), "--prompt", "a cat runs",
        "--prompt", "a dog jumps", "--num-inputs", "2", "--steps", "3", "--cfg-scale", "4",
        "--height", "32", "--width", "32", "--num-frames", "5", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.split()[-1] == str(out / "guider_config.json")
    report = json.loads((out / "search.json").read_text())
    top = report["candidates"][0]
    guider = STGGuidance.from_pretrained(out)
    assert (list(guider.stg_blocks), guider.stg_strategy) == ([top["block"]], top["strategy"])
    assert guider.guidance_scale == 4.0
    assert len(report["candidates"]) == 2 * len(STRATEGIES)
    assert main(["stg-search", str(pipeline), "--out", str(out)]) == 2
    assert "is a diffusers pipeline: give the inputs' prompts" in capsys.readouterr().err
    assert main(["stg-search", str(pipeline), "--out", str(pipeline), "--prompt", "a cat"]) == 2
    assert "is the model directory" in capsys.readouterr().err
    argv = ["stg-search", str(pipeline), "--out", str(out), "--prompt", "a", "--num-inputs", "0"]
    assert main(argv) == 2
    assert "--num-inputs must be an integer >= 1, got 0" in capsys.readouterr().err
    argv = ["stg-search", str(pipeline), "--out", str(out), "--prompt", "a", "--cfg-scale-2", "3"]
    assert main(argv) == 2
    assert "--cfg-scale-2 is the CFG scale of a second expert" in capsys.readouterr().err


def test_cli_searches_each_expert_of_a_wan22_pipeline_directory(tmp_path, capsys):
    pipeline = _save_tiny_wan_pipeline(tmp_path / "pipe", two_experts=True)
    out = tmp_path / "search"
    argv = [
        "stg-search", str(pipeline), "--out", str(out), "--prompt", "a cat runs",
        "--steps", "5", "--cfg-scale", "4", "--cfg-scale-2", "3", "--num-inputs", "1",
        "--height", "32", "--width", "32", "--num-frames", "5", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == [
        str(out / "guider_config.json"),
        str(out / "guider_2" / "guider_config.json"),
    ]
    report = json.loads((out / "search.json").read_text())
    for suffix, subfolder, scale in (("", None, 4.0), ("_2", "guider_2", 3.0)):
        top = report["candidates" + suffix][0]
        guider = STGGuidance.from_pretrained(out, subfolder=subfolder)
        assert (list(guider.stg_blocks), guider.stg_strategy) == ([top["block"]], top["strategy"])
        assert guider.guidance_scale == scale
        assert report["chosen" + suffix]["stg_blocks"] == [top["block"]]
