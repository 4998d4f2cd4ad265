"""A study cut short (the GPU call's time limit, a lost machine) goes on where it stopped when run
again: `studies/sla_study.py` (and `lora_study.py`, which runs through it) resumes each
fine-tuning run from its checkpoint and scores only what `results.jsonl` lacks."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from slatte.training.checkpoint import LATEST_FILE, STATE_FILE, checkpoint_paths

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
sla_study = importlib.import_module("sla_study")

FLAGS = ["--attention", "sla", "--sla-critical", "0.05"]


def _checkpoint(run_dir: Path, step: int) -> None:
    _, final = checkpoint_paths(run_dir, step)
    final.mkdir(parents=True)
    (final / STATE_FILE).write_bytes(b"")
    (run_dir / LATEST_FILE).write_text(final.name)


def _command(run_dir: Path) -> list[str] | None:
    return sla_study.train_command("DENSE", run_dir, 400, 200, "cpu", FLAGS)


def test_a_new_run_starts_from_the_dense_model(tmp_path):
    cmd = _command(tmp_path / "sla")
    assert cmd[cmd.index("--init-from") + 1] == "DENSE" and cmd[-len(FLAGS) :] == FLAGS
    assert "--resume" not in cmd and "--overwrite" not in cmd


def test_a_run_with_a_checkpoint_resumes_and_a_finished_one_is_skipped(tmp_path):
    run = tmp_path / "sla"
    _checkpoint(run, 200)
    cmd = _command(run)
    assert "--resume" in cmd and "--init-from" not in cmd  # (its flags are in its checkpoint)
    _checkpoint(run, 400)
    assert _command(run) is None


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    run = tmp_path / "sla"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    cmd = _command(run)
    assert "--overwrite" in cmd and "--init-from" in cmd


def test_scored_rows_are_read_back(tmp_path):
    results = tmp_path / "results.jsonl"
    assert sla_study.recorded(results) == []
    rows = [{"variant": "dense", "step": 0}, {"variant": "sla", "step": 200}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sla_study.recorded(results) == rows


CHILD = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def saved(*_):
    (here / "saved").write_text("checkpoint")
    sys.exit(130)
signal.signal(signal.SIGTERM, saved)
(here / "started").write_text("")
time.sleep(60)
"""


def test_a_stopped_study_lets_its_runs_save_a_checkpoint(tmp_path):
    """SIGTERM to the study (a time limit) reaches the fine-tuning run it started, which saves
    its checkpoint (here: writes a file) before the study exits."""
    studies = Path(__file__).resolve().parents[1] / "studies"
    run = [sys.executable, "-c", CHILD, str(tmp_path)]
    parent = (
        f"import sys; sys.path.insert(0, {str(studies)!r}); from pathlib import Path; "
        f"import sla_study; sla_study.fine_tune_all({{'a': {run!r}}}, Path({str(tmp_path)!r}), 1)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert (tmp_path / "saved").read_text() == "checkpoint"
