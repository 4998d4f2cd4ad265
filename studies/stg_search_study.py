"""The STG search on one model, measured: its wall time against the STG study's sampling, its
choice, and on the same small budget CFG alone, the chosen fixed term, the adaptive scale and a
per-depth term (the chosen block skipped whole plus `attention_values` at the last block).

    python studies/stg_search_study.py latte-digits-m --out docs/results/stg_search_cpu.json

The study's sampling cost is extrapolated from the verification's own time per video and step
(CFG + one STG branch on this machine): 49 settings x 50 videos x 50 DDPM steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from slatte.cli import resolve_model_dir
from slatte.eval.classifier import digit_accuracy
from slatte.eval.motion import motion_smoothness
from slatte.guidance import STG
from slatte.models import load_model
from slatte.pretrained import sampling_defaults
from slatte.sampling import SampleOptions, generate
from slatte.stg_search import VERIFY_RESCALE, stg_search

STUDY_VIDEO_STEPS = 49 * 50 * 50


def measure(model, stg, *, num_videos, steps, cfg_scale, seed, rescale=VERIFY_RESCALE) -> dict:
    options = SampleOptions(
        num_samples=num_videos, steps=steps, sampler="ddim", cfg_scale=cfg_scale, stg=stg,
        rescale=rescale, seed=seed, batch_size=num_videos, progress=False, formats=("png",),
    )  # fmt: skip
    start = time.perf_counter()
    videos, labels = generate(model, options)
    return {
        "stg": [term.to_json() for term in stg],
        "rescale": rescale,
        "frame_accuracy": digit_accuracy(videos, labels).frame_accuracy,
        "motion_smoothness": motion_smoothness(videos).smoothness,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--num-videos", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model_dir = resolve_model_dir(args.model)
    model = load_model(model_dir).eval()
    recommended = sampling_defaults(model_dir)
    cfg_scale = recommended.get("cfg_scale", 4.0)
    budget = {"num_videos": args.num_videos, "steps": args.steps, "cfg_scale": cfg_scale}
    result = stg_search(model, recommended=recommended, seed=args.seed, **budget)
    report = {"search": result.to_dict(), "budget": budget}
    verified_video_steps = len(result.verified) * args.num_videos * args.steps
    per_video_step = result.seconds["verify"] / verified_video_steps
    study_seconds = STUDY_VIDEO_STEPS * per_video_step
    search_seconds = sum(result.seconds.values())
    report["study_seconds_extrapolated"] = study_seconds
    report["search_fraction_of_study"] = search_seconds / study_seconds
    print(json.dumps(report["search"]["seconds"]), report["search_fraction_of_study"], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    chosen = result.chosen
    size = next(
        c.size
        for c in result.candidates
        if (c.block, c.strategy) == (chosen.first_block, chosen.strategy)
    )
    # The adaptive ratio that scale 1 gives on average (the signal's size is ||e_c - e_p|| in
    # units of ||e_c - e_u||, the CFG term is cfg_scale of those), capped at twice that scale.
    ratio = size / cfg_scale
    last = len(model.blocks) - 1
    settings = {
        "cfg_alone": (),
        "adaptive": (STG(2.0, chosen.blocks, chosen.strategy, adaptive=ratio),),
        "per_depth": (STG(1.0, (chosen.blocks[0], last), (chosen.strategy, "attention_values")),),
    }
    report["settings"] = {}
    for name, stg in settings.items():
        rescale = VERIFY_RESCALE if stg else 0.0  # CFG alone as in the STG study
        report["settings"][name] = measure(model, stg, seed=args.seed, rescale=rescale, **budget)
        print(name, json.dumps(report["settings"][name]), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
