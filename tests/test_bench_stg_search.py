"""`benchmarks/bench_stg_search.py --quick`: the STG search's signal timed on a tiny
Wan2.1-shaped transformer on the CPU, as the lead's GPU run times the full shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import slatte
from slatte.guidance.strategies import STRATEGY_NAMES

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_stg_search_quick_times_the_signal_on_the_cpu():
    src = str(Path(slatte.__file__).resolve().parents[1])  # the slatte under test
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
        "CUDA_VISIBLE_DEVICES": "",
    }
    script = ROOT / "benchmarks" / "bench_stg_search.py"
    argv = [sys.executable, str(script), "--quick", "--num-timesteps", "2", "--reps", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.splitlines()[0])
    assert record["dtype"] == "float32" and record["latents"] == [1, 4, 3, 16, 16]
    assert (record["num_blocks"], record["inputs"]) == (2, 2)
    assert record["pairs"] == 2 * len(STRATEGY_NAMES)
    assert record["expected_forwards"] == 2 * (2 + record["pairs"])
    assert record["signal_s"] > 0 and record["forward_ms"] > 0
    ratio = record["signal_s"] / (record["forward_ms"] / 1e3)
    assert record["signal_in_forwards"] == pytest.approx(ratio, rel=0.01, abs=0.01)
    scores = [c["score"] for c in record["top"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
