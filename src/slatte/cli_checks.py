"""Checks of command-line values that fail before any work starts, with one clear line: where
output goes, and which device runs. Torch is imported only when a device is checked."""

from __future__ import annotations

import os
from pathlib import Path

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if available, else cpu)"


def check_device(name: str | None) -> str:
    """The --device to use: `name` checked against this machine, or cuda where available."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: slatte runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device {name}: no CUDA device is usable here (torch {torch.__version__}, "
            f"{build}); use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return name


def check_writable(path: str | Path, *, folder: bool, flag: str = "--out") -> None:
    """Fail before any work when `path` (a folder to write into, or a file to write) cannot be
    written: it is the other kind, or its nearest existing folder is not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise ValueError(f"{flag} {path} is {kind}; give {'a folder' if folder else 'a file'}")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write into {existing} (permission denied)")
