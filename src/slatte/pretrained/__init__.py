"""Models that ship with slatte, and the sampling options each one recommends.

A shipped model is a model directory (``config.json`` + ``model.safetensors``) inside this
package, with its ``MODEL_CARD.md`` (data, command, steps, device, metrics) and a
``sampling.json``: the sampler, steps and guidance measured to work best for it
(docs/RESULTS.md). ``slatte sample`` without ``--checkpoint`` samples the default one. Any model
directory may carry a ``sampling.json``; command-line flags override it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "latte-digits-m"
SAMPLING_FILE = "sampling.json"
SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "guidance_rescale", "stg")
STG_KEYS = ("blocks", "scale", "strategy", "adaptive", "adaptive_schedule")

_ROOT = Path(__file__).resolve().parent


def available() -> tuple[str, ...]:
    """Names of the shipped models."""
    return tuple(sorted(p.name for p in _ROOT.iterdir() if (p / "config.json").is_file()))


def pretrained_dir(name: str = DEFAULT_MODEL) -> Path:
    """The directory of the shipped model `name` (load it with `slatte.models.load_model`)."""
    if name not in available():
        raise ValueError(f"no shipped model named {name!r}; shipped: {list(available())}")
    return _ROOT / name


def sampling_defaults(model_dir: str | Path) -> dict[str, Any]:
    """The recommended sampling options in `model_dir`'s sampling.json ({} when it has none),
    checked like the flags they stand for (errors name the file); STG blocks as tuples."""
    from slatte.diffusion.sampler_names import SAMPLER_NAMES
    from slatte.guidance.config import STG
    from slatte.guidance.options import check_blocks, check_rescale, check_scale

    path = Path(model_dir) / SAMPLING_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(SAMPLING_KEYS)}")
    if "sampler" in data and data["sampler"] not in SAMPLER_NAMES:
        raise ValueError(f"{path}: sampler must be one of {SAMPLER_NAMES}, got {data['sampler']!r}")
    steps = data.get("steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{path}: steps must be an integer >= 1, got {steps!r}")
    if "cfg_scale" in data:
        check_scale(f"{path}: cfg_scale", data["cfg_scale"])
    if "guidance_rescale" in data:
        check_rescale(f"{path}: guidance_rescale", data["guidance_rescale"])
    terms = data.get("stg", [])
    if not isinstance(terms, list):
        raise ValueError(f"{path}: 'stg' must be a list of terms, got {terms!r}")
    for term in terms:
        if not isinstance(term, dict) or set(term) - set(STG_KEYS) or "blocks" not in term:
            raise ValueError(
                f"{path}: each 'stg' term needs 'blocks' and may have {list(STG_KEYS[1:])}; "
                f"got {term!r}"
            )
        term["blocks"] = check_blocks(f"{path}: stg blocks", term["blocks"])
        try:
            STG.from_json(term)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return data
