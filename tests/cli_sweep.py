"""The bad-input sweep (issue 21): user mistakes given to `slatte` as a new user would, each run
as its own process, each of which must end cleanly: exit code 2, the last line of stderr
`slatte[ COMMAND]: error: ...`, no traceback, within its time limit (no hang); a request that
is allowed but takes hours must instead show its progress and the time left.

    PYTHONPATH=src python3 tests/cli_sweep.py          # every case (a few minutes on 2 cores)
    PYTHONPATH=src python3 tests/cli_sweep.py --fast   # the subset CI runs (tests/test_cli_sweep.py)

Each case starts Python and most import torch (seconds each on a busy 2-core machine), so CI
runs one `fast` case per kind of mistake; the others may build a model or train a Latte-T/2 run
of two steps first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--model", "Latte-T/2", "--frames", "2", "--size", "8", "--batch-size", "2"]
TINY += ["--sample-steps", "1", "--log-every", "1"]


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # {root} is the fixture folder of `prepare`
    fast: bool = False
    timeout: float = 120.0
    unprivileged: bool = False  # a permission case: root may write anywhere, so skipped as root
    # A request that is allowed but long: within `timeout` it must show progress with the time
    # left (`progress` in stderr, then "<" of tqdm's [elapsed<left]); it is then stopped.
    progress: str | None = None

    @property
    def name(self) -> str:
        return " ".join(self.argv)


def _case(text: str, **kw) -> Case:
    return Case(tuple(text.split()), **kw)


CASES = [
    # --- the command line itself
    _case("", fast=True),
    _case("nosuch", fast=True),
    _case("train --nosuch-flag"),
    _case("train --steps abc", fast=True),
    _case("train --resume --overwrite"),
    # --- train: numbers out of range
    _case("train --steps 0 --out {root}/new"),
    _case("train --batch-size 0 --out {root}/new"),
    _case("train --workers -1 --out {root}/new", fast=True),
    _case("train --keep-checkpoints -1 --out {root}/new"),
    _case("train --lr 0 --out {root}/new"),
    _case("train --lr -1 --out {root}/new"),
    _case("train --ema-decay 1.5 --out {root}/new"),
    _case("train --grad-clip -1 --out {root}/new"),
    _case("train --min-snr-gamma 0 --out {root}/new"),
    _case("train --frames 3 --sequence-parallel 2 --out {root}/new"),
    _case("train --latent-cache {root}/cache --out {root}/new"),
    _case("train --channels 2 --out {root}/new"),
    _case("train --precision bf16 --device cpu --out {root}/new"),
    # --- train: where and on what
    _case("train --device tpu9 --out {root}/new"),
    _case("train --out {root}/a_file"),
    _case("train --out {root}/readonly/run", unprivileged=True),
    _case("train --resume --out {root}/empty"),
    _case("train --out {root}/run " + " ".join(TINY)),
    _case("train --resume --steps 1 --out {root}/run " + " ".join(TINY)),
    _case("train --resume --lr 0.5 --out {root}/run"),
    _case("train --model Latte-Q/9 --out {root}/new"),
    _case("train --init-from {root}/nonexistent --out {root}/new"),
    _case("train --batch-size 100000000 --out {root}/new " + " ".join(TINY[:6])),
    # --- train: model and attention options
    _case("train --model-option depth --out {root}/new"),
    _case("train --model-option input_size=8 --out {root}/new"),
    _case("train --sla-critical 0.2 --out {root}/new"),
    _case("train --attention sla --sla-critical 2.5 --out {root}/new"),
    _case("train --attention sla --sla-critical 0.95 --sla-negligible 0.10 --out {root}/new"),
    _case("train --sla-block-q 48 --out {root}/new"),
    # --- train / sample / convert: LoRA
    _case("train --lora-rank 0 --out {root}/new"),
    _case("train --trainable lora+sla --out {root}/new"),
    _case("train --lora-rank 2 --trainable lora+sla --out {root}/new " + " ".join(TINY)),
    _case("sample --lora {root}/nonexistent --steps 1 --out {root}/s"),
    _case("sample --lora {root}/empty --steps 1 --out {root}/s"),
    _case("sample --lora-scale 0.5 --steps 1 --out {root}/s"),
    _case("convert merge-lora {root}/nonexistent {root}/empty {root}/merged"),
    _case("convert merge-lora {root}/run/checkpoints/step_0000002/model {root}/merged"),
    # --- train: data
    _case("train --data {root}/nonexistent --out {root}/new"),
    _case("train --data {root}/corrupt --size 8 --frames 2 --out {root}/new"),
    _case("train --data {root}/stray_label --size 8 --frames 2 --out {root}/new"),
    _case("train --data {root}/float_label --size 8 --frames 2 --out {root}/new"),
    # --- sample
    _case("sample --checkpoint {root}/nonexistent --out {root}/s"),
    _case("sample --eta nan --out {root}/s", fast=True),
    _case("sample --steps 0 --out {root}/s"),
    _case("sample --steps 2000 --out {root}/s"),
    _case("sample --num-samples 0 --out {root}/s"),
    _case("sample --batch-size 0 --out {root}/s"),
    _case("sample --fps 0 --out {root}/s"),
    _case("sample --class 10 --steps 1 --out {root}/s"),
    _case("sample --out {root}/a_file"),
    _case("sample --formats mp4,xyz --out {root}/s"),
    _case("sample --cfg-scale -1 --out {root}/s"),
    _case("sample --stg-blocks 99 --steps 1 --out {root}/s"),
    _case("sample --checkpoint {root}/run --stg-scale 1 --out {root}/s"),
    _case("sample --sampler foo --out {root}/s"),
    _case("sample --device tpu9 --out {root}/s"),
    _case("sample --num-frames 0 --out {root}/s"),
    _case("sample --num-frames 40 --overlap 16 --steps 1 --out {root}/s"),
    _case("sample --num-frames 100000000 --out {root}/s"),
    _case("sample --num-frames 100000 --steps 1 --out {root}/s", progress="windows:", timeout=90),
    _case("sample --sla-critical 0.2 --out {root}/s"),
    # --- bench
    _case("bench --heads -1", fast=True),
    _case("bench --backends ,"),
    _case("bench --backends foo"),
    _case("bench --seq-len 0"),
    _case("bench --repeats 0"),
    _case("bench --device tpu9"),
    _case("bench --sla-feature-map foo"),
    # --- eval
    _case("eval --videos {root}/nonexistent"),
    _case("eval --videos {root}/two_videos --metrics foo"),
    _case("eval --videos {root}/two_videos --metrics motion --out {root}/empty", fast=True),
    _case(
        "eval --videos {root}/two_videos --metrics motion --out {root}/readonly/x.json",
        unprivileged=True,
    ),
    # --- convert and finetune
    _case("convert latte-official {root}/garbage.pt {root}/converted", fast=True),
    _case("convert latte-official {root}/garbage.safetensors {root}/converted"),
    _case("convert latte-official {root}/nonexistent.pt {root}/converted"),
    _case("convert latte-diffusers {root}/nonexistent {root}/converted"),
    _case("convert latte-diffusers {root}/garbage_diffusers {root}/converted"),
    _case("convert latte-diffusers {root}/two_videos {root}/converted --num-heads 2"),
    _case("finetune {root}/nonexistent {root}/tuned"),
    _case("finetune {root}/nonexistent {root}/tuned --latent-shape 4,3,8,8 --lora-rank 0"),
]


def prepare(root: Path, *, with_run: bool) -> None:
    """The files and folders the cases name: a file, an empty and a read-only folder, garbage
    checkpoints, video folders (broken, mislabelled, two clean videos) and, `with_run`, a
    trained run."""
    import torch

    from slatte.data import write_video

    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "readonly").mkdir()
    (root / "readonly").chmod(0o555)
    (root / "garbage.pt").write_bytes(b"garbage")
    (root / "garbage.safetensors").write_bytes(b"garbage")
    (root / "garbage_diffusers").mkdir()
    (root / "garbage_diffusers" / "config.json").write_text("{}")
    clip = torch.rand(4, 3, 8, 8) * 2 - 1
    for folder, names in {
        "two_videos": ("a.gif", "b.gif"),
        "corrupt": ("a.gif", "b.gif"),
        "stray_label": ("a.gif",),
        "float_label": ("a.gif",),
    }.items():
        (root / folder).mkdir()
        for name in names:
            write_video(root / folder / name, clip)
    (root / "corrupt" / "b.gif").write_bytes(b"GIF89a truncated")
    (root / "stray_label" / "labels.json").write_text(json.dumps({"a.gif": 0, "gone.gif": 1}))
    (root / "float_label" / "labels.json").write_text(json.dumps({"a.gif": 1.5}))
    if not with_run:
        return
    train = [sys.executable, "-m", "slatte.cli", "train", *TINY, "--steps", "2"]
    subprocess.run(
        [*train, "--out", str(root / "run")], check=True, env=_env(), capture_output=True
    )


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": SRC + (os.pathsep + path if path else "")}


def run_case(case: Case, root: Path) -> str | None:
    """None when `case` ended cleanly, else what went wrong."""
    argv = [part.format(root=root) for part in case.argv]
    if case.progress is not None:
        return _run_long_case(case, argv, root)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "slatte.cli", *argv],
            capture_output=True,
            text=True,
            timeout=case.timeout,
            env=_env(),
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {case.timeout:.0f} s"
    lines = done.stderr.strip().splitlines()
    prefix = "slatte" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
    if "Traceback" in done.stderr:
        return "traceback:\n" + done.stderr[-2000:]
    if done.returncode != 2:
        return f"exit code {done.returncode}; stderr: {done.stderr[-500:]}"
    if not lines or not lines[-1].startswith(("slatte: error:", f"{prefix}: error:")):
        return f"last line of stderr is not one error line: {lines[-1:] or done.stderr!r}"
    return None


def _run_long_case(case: Case, argv: list[str], root: Path) -> str | None:
    """None when the command shows its progress and the time left within `case.timeout`."""
    with subprocess.Popen(
        [sys.executable, "-m", "slatte.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=root,
    ) as process:
        try:
            _, stderr = process.communicate(timeout=case.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    if "Traceback" in stderr or "error:" in stderr:
        return "failed instead of running:\n" + stderr[-2000:]
    shown = [line for line in stderr.replace("\r", "\n").splitlines() if case.progress in line]
    if not any("<" in line and "<?" not in line for line in shown):
        return f"no {case.progress!r} progress with the time left in {case.timeout:.0f} s"
    return None


def sweep(cases: list[Case], *, workers: int = 2) -> dict[str, str | None]:
    """Run `cases` on fresh fixtures; the failure of each by name (None: handled cleanly)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, with_run=any("{root}/run" in part for c in cases for part in c.argv))
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = pool.map(lambda case: run_case(case, root), cases)
                return {case.name: result for case, result in zip(cases, results, strict=True)}
        finally:
            (root / "readonly").chmod(0o755)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the cases CI runs")
    args = parser.parse_args()
    root_user = os.geteuid() == 0
    cases = [c for c in CASES if (c.fast or not args.fast) and not (c.unprivileged and root_user)]
    results = sweep(cases)
    for name, problem in results.items():
        print(f"{'ok  ' if problem is None else 'FAIL'} slatte {name}")
        if problem is not None:
            print("     " + problem.replace("\n", "\n     "))
    failed = sum(problem is not None for problem in results.values())
    print(f"{len(results) - failed} of {len(results)} handled cleanly")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
