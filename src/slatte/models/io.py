"""Model directories: `config.json` (format version + config) and `model.safetensors`.

A directory is written under a temporary name beside its destination and renamed into place,
so a crash never leaves a torn checkpoint at the destination.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch

from ..ops.sla.config import SLAConfig
from .configs import VideoDiTConfig
from .latte import VideoDiT

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_MODEL_FILES = {CONFIG_NAME, WEIGHTS_NAME}
# Keys a checkpoint may lack when loaded with an SLA backend (projections start at zero).
_SLA_SUFFIXES = (".sla.proj_l.weight", ".sla.proj_l.bias")


def save_model(
    model: VideoDiT,
    directory: str | os.PathLike,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model`'s config and `state_dict` (e.g. EMA weights; default: the model's own) to
    `directory`, replacing a previous model directory there. Returns the directory."""
    directory = Path(directory)
    weights = dict(model.state_dict() if state_dict is None else state_dict)
    _check_state_dict(model, weights, allow_missing_sla=False)
    if directory.exists() and not (
        directory.is_dir() and set(os.listdir(directory)) <= _MODEL_FILES
    ):
        raise ValueError(
            f"refusing to overwrite {directory}: it exists and is not a model directory "
            f"(allowed contents: {sorted(_MODEL_FILES)})"
        )
    from safetensors.torch import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config = {
            "format_version": FORMAT_VERSION,
            "model": "VideoDiT",
            "config": model.config.to_dict(),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        # safetensors creates its file owner-only (0600); give it the mode every other file
        # gets under the user's umask, as config.json has.
        os.chmod(tmp / WEIGHTS_NAME, stat.S_IMODE(os.stat(tmp / CONFIG_NAME).st_mode))
        if directory.exists():
            # Directories cannot be replaced atomically: move the old one aside first, so that
            # at every instant one complete model directory exists under one of the two names.
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def load_config(directory: str | os.PathLike) -> VideoDiTConfig:
    """The VideoDiTConfig stored in a model directory."""
    path = _model_dir(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a slatte model directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ValueError(f"{path} has no 'config' entry; not a slatte model config")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this slatte reads version {FORMAT_VERSION}"
        )
    try:
        return VideoDiTConfig.from_dict(data["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid model config in {path}: {err}") from None


def load_model(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention_backend: str | None = None,
    sla: SLAConfig | None = None,
) -> VideoDiT:
    """Build the model a directory describes and load its weights, in eval mode.

    `attention_backend` / `sla` override the stored ones. Loading a dense checkpoint with an SLA
    backend leaves the new `sla.proj_l` projections at zero; loading an SLA checkpoint with
    "sdpa" drops them. Any other missing, unexpected or mis-shaped key is an error.
    """
    config = load_config(directory)
    path = _model_dir(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model directory has no weights")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} (corrupt or not a safetensors file): {err}") from None

    changes = {}
    if attention_backend is not None:
        changes["attention_backend"] = attention_backend
    if sla is not None:
        changes["sla"] = sla
    model = VideoDiT(config.replace(**changes) if changes else config)
    if model.config.attention_backend == "sdpa":
        weights = {k: v for k, v in weights.items() if not k.endswith(_SLA_SUFFIXES)}
    _check_state_dict(model, weights, allow_missing_sla=True)
    model.load_state_dict(weights, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def _model_dir(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    return directory


def _check_state_dict(
    model: VideoDiT, weights: Mapping[str, torch.Tensor], *, allow_missing_sla: bool
) -> None:
    expected = model.state_dict()
    missing = sorted(
        k
        for k in expected.keys() - weights.keys()
        if not (allow_missing_sla and k.endswith(_SLA_SUFFIXES))
    )
    unexpected = sorted(weights.keys() - expected.keys())
    mismatched = sorted(
        f"{k}: {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected.keys() & weights.keys()
        if weights[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise ValueError("state dict does not match the model config: " + "; ".join(problems))
