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
STG_KEYS = ("blocks", "scale", "strategy")

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
    """The recommended sampling options in `model_dir`'s sampling.json ({} when it has none)."""
    path = Path(model_dir) / SAMPLING_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    unknown = sorted(set(data) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(SAMPLING_KEYS)}")
    for term in data.get("stg", []):
        bad = sorted(set(term) - set(STG_KEYS))
        if bad or "blocks" not in term:
            raise ValueError(
                f"{path}: each 'stg' term needs 'blocks' and may have {list(STG_KEYS[1:])}; "
                f"got {sorted(term)}"
            )
    return data
