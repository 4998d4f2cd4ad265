"""The STG search (`slatte stg-search`) for diffusers pipelines and transformers: rank every
(block, strategy) pair by the label-free signal of `slatte.guidance.search` and write the best
as an `STGGuidance` config.

1. `record_guidance_inputs(pipe, ...)`: one run of the pipeline (CFG on, latents out, no
   decoding) records the transformer's conditional and unconditional inputs at the steps
   nearest to the progress points: the noised latents the model meets at those timesteps when it
   samples. Wan-family and HunyuanVideo-1.5 pipelines call it once per condition, conditional
   first; LTX-Video, Latte, CogVideoX and Mochi pipelines batch [uncond; cond]
   (`ModelSpec.batched_cfg`). Wan2.2's two experts (`transformer` for the high-noise steps,
   `transformer_2` for the low-noise ones, switching at the pipeline's `boundary_ratio`): each
   recorded step goes to the expert that ran it, so each expert is searched on its own inputs.
2. `diffusers_perturbation_signals(transformer, inputs)`: per recorded step, `e_c` and `e_u`
   from one forward each and, per pair, `e_p` from one forward under the STG hooks
   (`perturbed_pass`: every row perturbed; forking would run the conditional rows after the
   pair's block again, which the signal does not need); the signal's
   `alignment = cos(e_c − e_p, e_c − e_u)` ranks the pairs, least aligned with CFG first.
3. `diffusers_stg_search(pipe, ...)`: both; the top pair becomes
   `STGGuidance(guidance_scale, stg_scale=1, stg_blocks=[block], stg_strategy=strategy,
   guidance_rescale=0.7)` (`chosen_guider`), which `write_guider_config` saves as
   `guider_config.json`, diffusers' own format for guiders: `STGGuidance.from_pretrained(DIR)`
   reads it back, and its `stg_blocks` / `stg_strategy` / `stg_scale` are `enable_stg`'s
   `blocks` / `strategy` / `scale`. With two experts the low-noise expert's choice is written
   the same way into the subfolder `guider_2` (`SECOND_GUIDER`), named after its guider
   component in diffusers' modular Wan2.2 pipelines:
   `STGGuidance.from_pretrained(DIR, subfolder="guider_2")` reads it, and its keys are
   `enable_stg`'s `blocks_2` / `strategy_2` / `scale_2`.
No verification by sampling: without a metric for the model's videos, the signal decides (as
for slatte models without the digits data).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..guidance.search import DEFAULT_PROGRESS, Candidate, ranked, row_signals
from ..guidance.strategies import STRATEGY_NAMES, get_strategy
from .diffusers_common import execution_blocks, model_spec, resolve_transformers
from .diffusers_stg import guided_channels, map_tensors, parameter_names, perturbed_pass

SEARCH_RESCALE = 0.7  # as the search for slatte models writes (`slatte.stg_search`)
# The subfolder of the low-noise expert's guider config, named after the guider of
# `transformer_2` in diffusers' modular Wan2.2 pipelines; `from_pretrained(out, subfolder=...)`.
SECOND_GUIDER = "guider_2"
EXPERT_NAMES = ("transformer", "transformer_2")  # `resolve_transformers`' order


@dataclass(frozen=True)
class GuidanceInputs:
    """One denoising step's transformer inputs: the keyword arguments of the conditional and
    of the unconditional prediction (the same latents and timestep)."""

    cond: dict[str, Any]
    uncond: dict[str, Any]


@dataclass
class DiffusersSearchResult:
    """The ranked `candidates`, the `chosen` guider's config and the wall time of each phase
    (seconds: `record`, the pipeline run; `signal`, the ranking of every expert). With two
    experts (Wan2.2), `candidates` / `chosen` are the high-noise expert's (`transformer`) and
    `candidates_2` / `chosen_2` the low-noise one's (`transformer_2`); otherwise those are None."""

    candidates: list[Candidate]
    chosen: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    candidates_2: list[Candidate] | None = None
    chosen_2: dict | None = None

    def to_dict(self) -> dict:
        result = {"candidates": [c.to_dict() for c in self.candidates], "chosen": self.chosen}
        if self.candidates_2 is not None:
            result["candidates_2"] = [c.to_dict() for c in self.candidates_2]
            result["chosen_2"] = self.chosen_2
        return {**result, "seconds": self.seconds}


def _step_indices(num_inference_steps: int, progress: Sequence[float]) -> list[int]:
    """The denoising steps nearest to each progress point (0 = the first step)."""
    for p in progress:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"progress points must lie in [0, 1], got {p!r}")
    return sorted({min(round(p * num_inference_steps), num_inference_steps - 1) for p in progress})


@torch.no_grad()
def record_guidance_inputs(
    pipe: Any,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    progress: Sequence[float] = DEFAULT_PROGRESS,
    **call_kwargs: Any,
) -> list[list[GuidanceInputs]]:
    """Run `pipe` once and return its transformers' inputs at the steps nearest to `progress`
    (fractions of the run, 0 = the first step; module docstring): one list per transformer, in
    `EXPERT_NAMES` order (Wan2.2: the high-noise expert's steps, then the low-noise one's), each
    step given to the transformer that ran it.

    `call_kwargs` go to the pipeline call as they are (prompt or prompt_embeds, negative ones,
    height, width, num_frames, generator, Wan2.2's guidance_scale_2, ...); the pipeline returns
    latents (`output_type "latent"`), so nothing is decoded.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise ValueError(
            f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}"
        )
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number > 1, got {guidance_scale!r}")
    if guidance_scale <= 1.0:
        raise ValueError(
            f"the search measures STG against CFG: give guidance_scale > 1, got {guidance_scale}"
        )
    if not isinstance(getattr(pipe, "transformer", None), nn.Module):
        raise ValueError(
            f"record_guidance_inputs takes a diffusers pipeline with a .transformer, got "
            f"{type(pipe).__name__}; for a bare transformer, give its inputs to "
            "diffusers_perturbation_signals"
        )
    experts = resolve_transformers(pipe)
    specs = [model_spec(expert) for expert in experts]
    wanted = set(_step_indices(num_inference_steps, progress))
    calls: dict[int, list[dict]] = defaultdict(list)
    step_experts: list[int] = []  # the expert that ran each step so far
    last_timestep: list[torch.Tensor] = []

    def record(
        expert: int, params: tuple[str, ...], module: nn.Module, args: tuple, kwargs: dict
    ) -> None:
        named = {**dict(zip(params, args, strict=False)), **kwargs}
        timestep = named["timestep"].detach().cpu()
        # A new timestep (or expert) starts a step; the calls of one step share it.
        if (
            not last_timestep
            or step_experts[-1] != expert
            or not torch.equal(last_timestep[-1], timestep)
        ):
            last_timestep.append(timestep)
            step_experts.append(expert)
        step = len(last_timestep) - 1
        if step in wanted:  # copies: a pipeline may update its latents in place
            calls[step].append({k: map_tensors(v, torch.clone) for k, v in named.items()})

    handles = [
        expert.register_forward_pre_hook(
            partial(record, i, parameter_names(expert)), with_kwargs=True
        )
        for i, expert in enumerate(experts)
    ]
    try:
        pipe(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type="latent",
            **call_kwargs,
        )
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(wanted - set(calls))
    if missing:
        raise ValueError(
            f"the pipeline ran {len(last_timestep)} denoising steps, not the "
            f"{num_inference_steps} asked for: no inputs recorded for steps {missing}"
        )
    inputs: list[list[GuidanceInputs]] = [[] for _ in experts]
    for step in sorted(calls):
        spec = specs[step_experts[step]]
        inputs[step_experts[step]].append(_split(calls[step], spec.batched_cfg, spec.sample_inputs))
    for expert, recorded in enumerate(inputs):
        if not recorded:
            ran = [step for step, e in enumerate(step_experts) if e == expert]
            raise ValueError(
                f"no progress point falls on a step of {EXPERT_NAMES[expert]}, which ran "
                f"{f'steps {ran}' if ran else 'no step'} of the {len(step_experts)} (progress p "
                f"picks step round(p × {num_inference_steps})): give progress points (or a step "
                "count) that reach every expert"
            )
    return inputs


def _split(calls: list[dict], batched_cfg: bool, sample_inputs: tuple[str, ...]) -> GuidanceInputs:
    """One step's calls as conditional and unconditional inputs."""
    if not batched_cfg:
        if len(calls) < 2:
            raise ValueError(
                "the pipeline made one transformer call per step: CFG is off, and the search "
                "measures STG against CFG"
            )
        return GuidanceInputs(cond=calls[0], uncond=calls[1])
    if len(calls) != 1:
        raise ValueError(
            f"a pipeline that batches [uncond; cond] calls its transformer once per step, this "
            f"one {len(calls)} times"
        )
    (both,) = calls
    batch = both["hidden_states"].shape[0]
    if batch % 2:
        raise ValueError(f"a CFG batch [uncond; cond] must be even, got {batch} rows")

    def half(first: bool) -> dict:
        rows = slice(0, batch // 2) if first else slice(batch // 2, batch)
        return {
            name: map_tensors(
                value, lambda t: t[rows] if t.dim() >= 1 and t.shape[0] == batch else t
            )
            if name in sample_inputs
            else value
            for name, value in both.items()
        }

    return GuidanceInputs(cond=half(False), uncond=half(True))


def _predict(transformer: nn.Module, kwargs: dict) -> torch.Tensor:
    return transformer(**{**kwargs, "return_dict": False})[0]


@torch.no_grad()
def diffusers_perturbation_signals(
    transformer: nn.Module,
    inputs: Sequence[GuidanceInputs],
    *,
    blocks: Sequence[int] | None = None,
    strategies: Sequence[str] = STRATEGY_NAMES,
) -> list[Candidate]:
    """Every (block, strategy) pair of a diffusers `transformer` (all blocks by default, in
    `enable_stg`'s order) with its signal over `inputs` (every row of every step), best first.

    `inputs`: from `record_guidance_inputs`, or built by hand (keyword arguments of the
    transformer's forward: noised latents, their timestep, the conditional and unconditional
    text states). Cost per step: 2 + (number of pairs) forwards of its batch.
    """
    depth = len(execution_blocks(transformer))
    blocks = list(range(depth)) if blocks is None else list(blocks)
    for block in blocks:
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < depth:
            raise ValueError(f"blocks must lie in 0..{depth - 1}, got {block!r}")
    for name in strategies:
        get_strategy(name)
    if not inputs:
        raise ValueError("diffusers_perturbation_signals needs at least one step's inputs")
    channels = guided_channels(transformer)
    mean = slice(None) if channels is None else slice(0, channels)  # guided channels, dim 1
    pairs = [(block, name) for block in blocks for name in strategies]
    rows: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for step in inputs:
        e_c = _predict(transformer, step.cond)[:, mean]
        e_u = _predict(transformer, step.uncond)[:, mean]
        for block, name in pairs:
            with perturbed_pass(transformer, blocks=[block], strategy=name):
                e_p = _predict(transformer, step.cond)[:, mean]
            rows[block, name].append(row_signals(e_c, e_u, e_p))
    return ranked(
        {
            pair: (torch.cat([s for s, _ in rows[pair]]), torch.cat([a for _, a in rows[pair]]))
            for pair in pairs
        }
    )


def chosen_guider(candidate: Candidate, guidance_scale: float) -> Any:
    """The `STGGuidance` of the search's choice: the pair at STG scale 1, rescale 0.7."""
    from .diffusers_guider import STGGuidance

    return STGGuidance(
        guidance_scale=guidance_scale,
        stg_scale=1.0,
        stg_blocks=[candidate.block],
        stg_strategy=candidate.strategy,
        guidance_rescale=SEARCH_RESCALE,
    )


def diffusers_stg_search(
    pipe: Any,
    *,
    num_inference_steps: int = 10,
    guidance_scale: float = 5.0,
    progress: Sequence[float] = DEFAULT_PROGRESS,
    blocks: Sequence[int] | None = None,
    strategies: Sequence[str] = STRATEGY_NAMES,
    **call_kwargs: Any,
) -> DiffusersSearchResult:
    """Rank the (block, strategy) pairs of `pipe.transformer` (and of Wan2.2's
    `pipe.transformer_2`, on its own steps' inputs) and choose one per transformer (module
    docstring). `call_kwargs` go to the pipeline's call (`record_guidance_inputs`): the
    prompts (or their embeddings) of the inputs, the video size, a generator; Wan2.2's
    `guidance_scale_2` is the low-noise expert's CFG scale in its chosen guider (as in the
    pipeline, `guidance_scale` where it is not given)."""
    start = time.perf_counter()
    inputs = record_guidance_inputs(
        pipe,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        progress=progress,
        **call_kwargs,
    )
    seconds = {"record": time.perf_counter() - start}
    start = time.perf_counter()
    ranking = [
        diffusers_perturbation_signals(expert, steps, blocks=blocks, strategies=strategies)
        for expert, steps in zip(resolve_transformers(pipe), inputs, strict=True)
    ]
    seconds["signal"] = time.perf_counter() - start
    guidance_scale_2 = call_kwargs.get("guidance_scale_2")
    scales = (guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2)
    chosen = [
        dict(chosen_guider(candidates[0], scale).config)
        for candidates, scale in zip(ranking, scales, strict=False)
    ]
    second = len(ranking) > 1
    return DiffusersSearchResult(
        candidates=ranking[0],
        chosen=chosen[0],
        seconds=seconds,
        candidates_2=ranking[1] if second else None,
        chosen_2=chosen[1] if second else None,
    )


def write_guider_config(config: dict, out: str | Path) -> Path:
    """Save the chosen guider's `config` as `out/guider_config.json` (diffusers' format for
    guiders; `STGGuidance.from_pretrained(out)` reads it). Wan2.2's low-noise expert:
    `write_guider_config(result.chosen_2, out / SECOND_GUIDER)`."""
    from .diffusers_guider import STGGuidance

    out = Path(out)
    STGGuidance.from_config(config).save_config(out)
    return out / STGGuidance.config_name


def run_diffusers_stg_search(args: Any) -> int:
    """`slatte stg-search PIPELINE_DIR --prompt ...` (`slatte.stg_search`'s parser)."""
    from diffusers import DiffusionPipeline

    from ..cli import _torch_dtype
    from ..stg_search import check_out_dir

    if not args.prompt:
        raise ValueError(
            f"{args.model} is a diffusers pipeline: give the inputs' prompts with --prompt TEXT "
            "(repeat it for several)"
        )
    if args.num_inputs < 1:
        raise ValueError(f"--num-inputs must be an integer >= 1, got {args.num_inputs}")
    check_out_dir(args.out, args.model)
    on_cuda = str(args.device).startswith("cuda")
    dtype = _torch_dtype(args.dtype or ("bf16" if on_cuda else "fp32"))
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = {
        name: getattr(args, name)
        for name in ("height", "width", "num_frames")
        if getattr(args, name) is not None
    }
    if args.cfg_scale_2 is not None:
        if getattr(pipe, "transformer_2", None) is None:
            raise ValueError(
                f"--cfg-scale-2 is the CFG scale of a second expert (transformer_2, Wan2.2); "
                f"{args.model} has one transformer"
            )
        call["guidance_scale_2"] = args.cfg_scale_2
    prompts = [args.prompt[i % len(args.prompt)] for i in range(args.num_inputs)]
    if args.negative_prompt is not None:
        call["negative_prompt"] = [args.negative_prompt] * args.num_inputs
    result = diffusers_stg_search(
        pipe,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg_scale if args.cfg_scale is not None else 5.0,
        prompt=prompts,
        generator=torch.Generator(args.device).manual_seed(args.seed),
        **call,
    )
    paths = [write_guider_config(result.chosen, args.out)]
    if result.chosen_2 is not None:
        paths.append(write_guider_config(result.chosen_2, Path(args.out) / SECOND_GUIDER))
    (Path(args.out) / "search.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    summary = {k: v for k, v in result.to_dict().items() if k.startswith("chosen")}
    print(json.dumps({**summary, "seconds": result.seconds}))
    for path in paths:
        print(path)
    return 0


__all__ = [
    "EXPERT_NAMES",
    "SECOND_GUIDER",
    "DiffusersSearchResult",
    "GuidanceInputs",
    "chosen_guider",
    "diffusers_perturbation_signals",
    "diffusers_stg_search",
    "record_guidance_inputs",
    "run_diffusers_stg_search",
    "write_guider_config",
]
