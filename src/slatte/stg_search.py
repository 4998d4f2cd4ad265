"""`slatte stg-search MODEL`: choose a model's STG term and write it as its `sampling.json`.

1. Rank every (block, strategy) pair by the label-free signal of `slatte.guidance.search` on a
   few noised inputs at several timesteps (moving-digits clips for a digits model, else the
   model's own samples).
2. Verify the best `top` pairs by sampling a small budget with each (CFG, the pair at STG scale
   1, rescale 0.7, the same seeds for all). For a digits model, score digit accuracy and motion
   smoothness and keep, among the pairs within `accuracy_slack` of the most accurate one, the
   smoothest; for other models the signal alone decides (no sampling).
3. Write the model's recommended options with the chosen term as `sampling.json` in `out`
   (never into the model directory).

A diffusers pipeline directory (`model_index.json`) is searched by
`slatte.integrations.diffusers_stg_search` instead: the signal on the transformer's inputs at
three steps of one pipeline run with the `--prompt`s, no verification, and the chosen term as an
STGGuidance config, `guider_config.json` in `out` (Wan2.2's two experts: each searched on the
steps it runs, the low-noise expert's choice in `out/guider_2/guider_config.json`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .guidance import STG
from .guidance.search import Candidate, perturbation_signals
from .guidance.strategies import STRATEGY_NAMES
from .models import VideoDiT

VERIFY_RESCALE = 0.7
DEFAULT_CFG_SCALE = 4.0


@dataclass
class SearchResult:
    """The ranked `candidates`, the `verified` ones' metrics, the `chosen` term, the written
    `sampling` options and the wall time of each phase (seconds)."""

    candidates: list[Candidate]
    verified: list[dict] = field(default_factory=list)
    chosen: STG | None = None
    sampling: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "verified": self.verified,
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "sampling": self.sampling,
            "seconds": self.seconds,
        }


def is_digits_model(model: VideoDiT) -> bool:
    """Whether the embedded moving-digits data and its metrics fit `model`."""
    cfg = model.config
    return cfg.in_channels == 1 and cfg.num_classes == 10


def stg_search(
    model: VideoDiT,
    *,
    recommended: dict | None = None,
    num_inputs: int = 4,
    top: int = 3,
    num_videos: int = 5,
    steps: int = 10,
    cfg_scale: float | None = None,
    accuracy_slack: float = 0.02,
    strategies: tuple[str, ...] = STRATEGY_NAMES,
    seed: int = 0,
) -> SearchResult:
    """Rank, verify and choose an STG term for `model` (module docstring).

    `recommended`: the model's current sampling options (its sampling.json), kept in the result
    except for the STG term and rescale; its sampler, steps and cfg_scale are used for
    verification unless `steps` / `cfg_scale` are given. `num_inputs` clean inputs are noised at
    the signal's timesteps; `top` pairs are verified with `num_videos` videos each.
    """
    from .eval.classifier import digit_accuracy
    from .eval.motion import motion_smoothness
    from .sampling import SampleOptions, generate

    if not isinstance(model, VideoDiT):
        raise ValueError(
            f"stg_search takes a slatte VideoDiT, got {type(model).__name__}; for a diffusers "
            "pipeline use slatte.integrations.diffusers_stg_search.diffusers_stg_search(pipe, "
            "...), for a diffusers transformer its diffusers_perturbation_signals"
        )
    for name, value, low in (
        ("num_inputs", num_inputs, 1),
        ("top", top, 1),
        ("num_videos", num_videos, 1),
        ("steps", steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    recommended = dict(recommended or {})
    cfg_scale = (
        cfg_scale if cfg_scale is not None else recommended.get("cfg_scale", DEFAULT_CFG_SCALE)
    )
    if cfg_scale == 1.0:
        raise ValueError("the search measures STG against CFG: give a cfg scale != 1")
    sampler = recommended.get("sampler", "ddim")
    num_classes = model.config.num_classes
    if num_classes < 1:
        raise ValueError(
            "the search measures STG against CFG towards a class, but this model is "
            "unconditional (num_classes=0)"
        )
    digits = is_digits_model(model)
    labels = torch.arange(num_inputs) % num_classes
    seconds = {}

    start = time.perf_counter()
    if digits:
        from .eval.evaluate import real_digits

        cfg = model.config
        x0 = real_digits(num_inputs, num_frames=cfg.num_frames, size=cfg.input_size, seed=seed)
    else:
        options = SampleOptions(
            num_samples=num_inputs, labels=tuple(labels.tolist()), steps=steps, sampler=sampler,
            cfg_scale=cfg_scale, seed=seed, batch_size=num_inputs, progress=False,
            formats=("png",),
        )  # fmt: skip
        x0, _ = generate(model, options)
    device = next(model.parameters()).device
    candidates = perturbation_signals(
        model, x0.to(device), y=labels.to(device), strategies=strategies, seed=seed
    )
    seconds["signal"] = time.perf_counter() - start

    result = SearchResult(candidates=candidates, seconds=seconds)
    chosen = candidates[0]
    if digits:
        start = time.perf_counter()
        for candidate in candidates[:top]:
            term = STG(1.0, (candidate.block,), candidate.strategy)
            options = SampleOptions(
                num_samples=num_videos, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                stg=(term,), rescale=VERIFY_RESCALE, seed=seed, batch_size=num_videos,
                progress=False, formats=("png",),
            )  # fmt: skip
            videos, video_labels = generate(model, options)
            result.verified.append(
                {
                    **candidate.to_dict(),
                    "frame_accuracy": digit_accuracy(videos, video_labels).frame_accuracy,
                    "motion_smoothness": motion_smoothness(videos).smoothness,
                }
            )
        seconds["verify"] = time.perf_counter() - start
        best_accuracy = max(v["frame_accuracy"] for v in result.verified)
        eligible = [
            v for v in result.verified if v["frame_accuracy"] >= best_accuracy - accuracy_slack
        ]
        pick = max(eligible, key=lambda v: v["motion_smoothness"])
        chosen = next(
            c for c in candidates if (c.block, c.strategy) == (pick["block"], pick["strategy"])
        )
    result.chosen = STG(1.0, (chosen.block,), chosen.strategy)
    result.sampling = {
        **recommended,
        "cfg_scale": cfg_scale,
        "guidance_rescale": VERIFY_RESCALE,
        "stg": [result.chosen.to_json()],
    }
    return result


def check_out_dir(out: str | Path, model_dir: str | Path) -> None:
    """Refuse to write the search's files into the model directory itself, so that a shipped
    model's (or a pipeline's) files are never overwritten."""
    if Path(out).resolve() == Path(model_dir).resolve():
        raise ValueError(
            f"--out {out} is the model directory; write the search's files elsewhere and copy "
            "them in if you want them"
        )


def write_sampling_json(sampling: dict, out: str | Path, model_dir: str | Path) -> Path:
    """Write `sampling` as `out/sampling.json` (`check_out_dir` first)."""
    check_out_dir(out, model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sampling.json"
    path.write_text(json.dumps(sampling, indent=2) + "\n")
    return path
