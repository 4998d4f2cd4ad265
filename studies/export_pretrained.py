"""Copy a trained model directory into the package as a shipped model, weights in bf16.

    python studies/export_pretrained.py RUN/checkpoints/step_0005000/model latte-digits-m

Writes `src/slatte/pretrained/NAME/{config.json,model.safetensors}`; the model card
(`MODEL_CARD.md`) and the recommended sampling options (`sampling.json`) are written by hand,
from the measurements in docs/RESULTS.md. bf16 halves the size (the package ships it) and
costs nothing measurable: the model was trained under bf16 autocast. A model with an all-zero SLA
projection is refused before anything is written: SLA layers start with a zero projection, so it
never trained its linear branch. The export is loaded back as a check.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slatte.models import load_model
from slatte.models.io import CONFIG_NAME, WEIGHTS_NAME

PRETRAINED = Path(__file__).resolve().parents[1] / "src" / "slatte" / "pretrained"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a slatte model directory")
    p.add_argument("name", help="the shipped model's name (a folder under slatte/pretrained)")
    args = p.parse_args()
    weights = load_file(str(args.model / WEIGHTS_NAME))
    untrained = [k for k, v in weights.items() if k.endswith("proj_l.weight") and not v.any()]
    if untrained:
        raise SystemExit(f"{args.model}: {untrained} are zero, not a fine-tuned SLA model")
    out = PRETRAINED / args.name
    out.mkdir(parents=True, exist_ok=True)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    shutil.copyfile(args.model / CONFIG_NAME, out / CONFIG_NAME)
    size = (out / WEIGHTS_NAME).stat().st_size / 2**20
    backend = load_model(out).config.attention_backend  # the export must load as it will ship
    print(f"{out}: {sum(v.numel() for v in half.values()):,} parameters, {size:.1f} MiB, {backend}")


if __name__ == "__main__":
    main()
