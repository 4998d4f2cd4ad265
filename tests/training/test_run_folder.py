"""Run folders through `slatte train`: one run per folder, --resume continues exactly the folder
given, --overwrite moves the old run aside, and a killed run's leftovers are cleaned up."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slatte.cli import main
from slatte.training.checkpoint import latest_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")
TRAIN = ["train", "--model", "Latte-T/2", "--frames", "2", "--size", "8", "--batch-size", "2"]
TRAIN += ["--sample-steps", "1", "--log-every", "1", "--ckpt-every", "2", "--seed", "3"]


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main([*TRAIN, "--steps", "4", "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def test_resuming_a_copy_continues_the_copy_and_leaves_the_original_alone(
    run, tmp_path, monkeypatch, capsys
):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    copy = _copy(run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths recorded in the folder must not depend on the cwd
    assert main([*TRAIN, "--out", str(copy), "--resume", "--steps", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].startswith(str(copy))
    assert latest_checkpoint(copy).name == "step_0000006"
    assert _steps(copy) == [1, 2, 3, 4, 5, 6]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert latest_checkpoint(run).name == "step_0000004"
    assert json.loads((copy / "train_config.json").read_text())["out_dir"] == "."


def test_a_non_empty_run_folder_is_refused_without_resume_or_overwrite(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert main([*TRAIN, "--steps", "2", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    with pytest.raises(SystemExit, match="2"):  # argparse: not allowed together
        main([*TRAIN, "--out", str(copy), "--resume", "--overwrite"])


def test_overwrite_moves_the_old_run_aside_and_says_so(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    assert main([*TRAIN, "--steps", "2", "--out", str(copy), "--overwrite"]) == 0
    err = capsys.readouterr().err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("copy.old-")]
    assert len(aside) == 1 and str(aside[0]) in err
    assert latest_checkpoint(aside[0]).name == "step_0000004"  # the old run, whole
    assert latest_checkpoint(copy).name == "step_0000002"
    assert _steps(copy) == [1, 2]


def test_resume_keeps_the_runs_target_and_says_when_there_is_nothing_to_do(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    # Back to the step-2 checkpoint, as if the run had been stopped there.
    shutil.rmtree(copy / "checkpoints" / "step_0000004")
    (copy / "latest").write_text("step_0000002")
    assert main([*TRAIN, "--out", str(copy), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4  # the run's own --steps 4
    assert main([*TRAIN, "--out", str(copy), "--resume", "--steps", "3"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert latest_checkpoint(copy).name == "step_0000004"


def test_resume_refuses_to_change_what_shapes_the_run(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    assert main([*TRAIN, "--out", str(copy), "--resume", "--steps", "6", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "0.0001" in err
    assert latest_checkpoint(copy).name == "step_0000004"


def test_resume_cleans_stale_temporaries_and_replayed_metric_lines(run, tmp_path):
    copy = _copy(run, tmp_path)
    # What a kill leaves: a half-written checkpoint, and lines logged past the checkpoint.
    stale = copy / "checkpoints" / ".tmp_step_0000005"
    (stale / "model").mkdir(parents=True)
    (copy / "latest.tmp").write_text("step_0000005")
    with (copy / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 9.0}) + "\n" + '{"step": 6, "lo')
    assert main([*TRAIN, "--out", str(copy), "--resume", "--steps", "6"]) == 0
    assert not stale.exists() and not (copy / "latest.tmp").exists()
    assert _steps(copy) == [1, 2, 3, 4, 5, 6]
    assert 9.0 not in [json.loads(x)["loss"] for x in (copy / "metrics.jsonl").open()]


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main([*TRAIN, "--steps", "1", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_saves_the_current_step_and_exits_130(tmp_path, signum):
    # SIGTERM is what torchrun sends its workers on the terminal's Ctrl-C: the same path.
    out = tmp_path / "run"
    argv = [*TRAIN, "--steps", "100000", "--ckpt-every", "100000", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slatte.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("slatte train: interrupted at step ")
    step = int(last_line.removeprefix("slatte train: interrupted at step ").split(";")[0])
    assert latest_checkpoint(out).name == f"step_{step:07d}"
    assert "saved checkpoint" in last_line


def test_a_run_with_relative_paths_resumes_from_another_directory(tmp_path, monkeypatch):
    from slatte.data import write_video

    start, other = tmp_path / "a", tmp_path / "b"
    (start / "videos").mkdir(parents=True)
    other.mkdir()
    for name in ("x.gif", "y.gif"):
        write_video(start / "videos" / name, torch.rand(3, 1, 8, 8) * 2 - 1)
    monkeypatch.chdir(start)
    argv = [*TRAIN, "--data", "videos", "--channels", "1"]
    assert main([*argv, "--steps", "2", "--out", "run"]) == 0
    recorded = json.loads((start / "run" / "train_config.json").read_text())
    assert recorded["data"] == str((start / "videos").resolve())  # outside the folder: absolute
    assert recorded["out_dir"] == "."
    monkeypatch.chdir(other)
    assert main([*TRAIN, "--out", str(start / "run"), "--resume", "--steps", "4"]) == 0
    assert latest_checkpoint(start / "run").name == "step_0000004"
    # The data given again, spelled from here, is the same folder: no "keeps its --data" error.
    rel = os.path.relpath(start / "videos")
    assert (
        main([*TRAIN, "--out", str(start / "run"), "--resume", "--steps", "5", "--data", rel]) == 0
    )


def test_paths_inside_the_run_folder_are_recorded_relative_to_it(tmp_path):
    from slatte.training import TrainConfig

    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    (tmp_path / "vae").mkdir()
    cfg = TrainConfig(out_dir=str(run), vae=str(tmp_path / "vae"), latent_cache=str(run / "cache"))
    recorded = cfg.for_run_folder(run)
    assert recorded["latent_cache"] == "cache" and recorded["vae"] == str(tmp_path / "vae")
    assert recorded["data"] == "digits"  # the built-in dataset, not a path
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resumed = TrainConfig.from_dict(recorded).resumed(str(copy), {})
    assert resumed.latent_cache == str(copy / "cache")  # the copy's own cache


def test_sla_runs_resume(run, tmp_path):
    """A run with SLA options (an SLAConfig among the model overrides, which train_config.json
    holds as a dict) resumes, trained from scratch or fine-tuned from a dense model."""
    from slatte.training import TrainConfig

    scratch, tuned = tmp_path / "scratch", tmp_path / "tuned"
    sla = ["--attention", "sla", "--sla-critical", "0.5"]
    assert main([*TRAIN, *sla, "--steps", "2", "--out", str(scratch)]) == 0
    dense = latest_checkpoint(run) / "model"
    assert main([*TRAIN, *sla, "--init-from", str(dense), "--steps", "2", "--out", str(tuned)]) == 0
    for out in (scratch, tuned):
        recorded = json.loads((out / "train_config.json").read_text())
        assert TrainConfig.from_dict(recorded).model_overrides["sla"].critical == 0.5
        assert main([*TRAIN, "--out", str(out), "--resume", "--steps", "4"]) == 0
        assert latest_checkpoint(out).name == "step_0000004"
