"""Training checkpoints: the EMA model directory plus the state needed to resume exactly.

Layout of a run folder:
    run/checkpoints/step_0001000/model/          config.json + model.safetensors (EMA weights)
    run/checkpoints/step_0001000/training_state.pt   non-EMA weights, optimizer, grad scaler, step
    run/latest                                   the name of the newest complete checkpoint
Each checkpoint is written under a temporary name and renamed into place, and `latest` is
replaced atomically after it, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.io import save_model

STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
TMP_PREFIX = ".tmp_step_"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    ema: nn.Module,
    state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write checkpoint `step` (EMA model + `state`) atomically; prune all but `keep_last`."""
    tmp = start_checkpoint(run_dir, step)
    save_model(ema, tmp / "model")
    torch.save({**state, "step": step}, tmp / STATE_FILE)
    return publish_checkpoint(run_dir, step, keep_last=keep_last)


def checkpoint_paths(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    root = Path(run_dir) / "checkpoints"
    return root / f"{TMP_PREFIX}{step:07d}", root / f"step_{step:07d}"


def start_checkpoint(run_dir: str | Path, step: int) -> Path:
    """An empty temporary folder to write checkpoint `step` into."""
    tmp, _ = checkpoint_paths(run_dir, step)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_checkpoint(run_dir: str | Path, step: int, *, keep_last: int) -> Path:
    """Rename the complete temporary folder into place, then point `latest` at it, then prune."""
    tmp, final = checkpoint_paths(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(Path(run_dir) / LATEST_FILE, final.name)
    for old in sorted(final.parent.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete what a killed run left half-written: checkpoint folders that were never published
    and a `latest` pointer that was never renamed into place."""
    for tmp in (Path(run_dir) / "checkpoints").glob(TMP_PREFIX + "*"):
        shutil.rmtree(tmp, ignore_errors=True)
    _tmp_name(Path(run_dir) / LATEST_FILE).unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None if it has none."""
    pointer = Path(run_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    path = Path(run_dir) / "checkpoints" / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{pointer} names checkpoint {path.name!r}, but {path / STATE_FILE} is missing"
        )
    return path


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}: not a slatte training checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"could not read training state {path}: {err}") from err


def _tmp_name(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)
