"""Small evaluation networks on disk: ``<name>.safetensors`` (weights) + ``<name>.json`` (meta).

The JSON holds the constructor arguments under ``"arch"`` plus whatever the trainer recorded
(test accuracy, training command, data); the shipped files live in ``slatte/eval/weights``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["SHIPPED_WEIGHTS", "load_net", "read_meta", "save_net"]

SHIPPED_WEIGHTS = Path(__file__).parent / "weights"
Net = TypeVar("Net", bound=nn.Module)


def _resolve(name_or_path: str | Path) -> Path:
    """``"classifier"`` -> the shipped file stem; a path (with or without suffix) -> its stem."""
    path = Path(name_or_path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    if not path.parent.parts and not path.with_suffix(".json").exists():
        path = SHIPPED_WEIGHTS / path
    return path


def read_meta(name_or_path: str | Path) -> dict[str, Any]:
    """The JSON meta beside a network's weights (shipped name or path)."""
    stem = _resolve(name_or_path)
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"no network meta file {meta_path}")
    return json.loads(meta_path.read_text())


def save_net(net: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``net``'s weights and ``meta`` (must hold ``"arch"``) beside each other; returns
    the ``.safetensors`` path."""
    if "arch" not in meta:
        raise ValueError(f"meta must hold the constructor arguments under 'arch', got {list(meta)}")
    from safetensors.torch import save_file

    stem = Path(path).with_suffix("") if Path(path).suffix else Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return stem.with_suffix(".safetensors")


def load_net(cls: type[Net], name_or_path: str | Path, device: str | torch.device = "cpu") -> Net:
    """Build ``cls(**meta["arch"])``, load its weights and put it in eval mode."""
    from safetensors.torch import load_file

    stem = _resolve(name_or_path)
    meta = read_meta(stem)
    net = cls(**meta["arch"])
    net.load_state_dict(load_file(str(stem.with_suffix(".safetensors"))))
    return net.to(device).eval()
