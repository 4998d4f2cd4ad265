"""A run folder holds one training run; these rules keep it that way.

    run/train_config.json     the run's TrainConfig ("out_dir" is "." : the folder itself)
    run/metrics.jsonl         one JSON line per logged step
    run/loss_curve.png        the loss so far; run/tensorboard/ where TensorBoard is installed
    run/samples/step_N/       preview samples
    run/checkpoints/step_N/   checkpoints, run/latest names the newest (see checkpoint.py)

Nothing inside names the folder itself, so a copied or moved run folder is a run of its own:
resuming it continues exactly that folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"


def prepare_run_folder(run_dir: str | Path, *, resume: bool, overwrite: bool) -> str | None:
    """Check that `run_dir` may take this run before anything is written; with `overwrite`,
    move an existing run aside. Returns the line to tell the user about that move, else None."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in the folder, --overwrite moves it aside: give one"
        )
    if resume or not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not overwrite:
        raise ValueError(
            f"run folder {run_dir} is not empty: give --resume to continue its run, "
            "--overwrite to move it aside and start anew, or another --out"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    suffix = 1
    while aside.exists():  # two overwrites within one second
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{suffix}")
        suffix += 1
    os.replace(run_dir, aside)
    return f"--overwrite: moved the previous run in {run_dir} to {aside}"


def trim_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the metric lines past `step` (the checkpoint a run resumes from), which the resumed
    run logs again, and a line torn by a kill mid-write."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
