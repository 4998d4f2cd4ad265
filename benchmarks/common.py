"""Shared helpers of the benchmark scripts: environment, timing, and the JSON + table output."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """Device name and library versions, for the JSON record of a run."""
    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def bench_ms(
    fn: Callable[[], Any],
    warmup_ms: int = 100,
    rep_ms: int = 500,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> float:
    """Median milliseconds of `fn` on the GPU (CUDA events, after warm-up) via Triton's do_bench.

    `grad_to_none`: leaves whose `.grad` is reset (untimed) before each call, so that a timed
    backward writes fresh gradients instead of adding into the last call's (an extra read and
    write of each gradient that no training step pays)."""
    from triton.testing import do_bench

    return float(
        do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median")
    )


def try_bench(fn: Callable[[], Any], **kwargs: Any) -> float | str:
    """`bench_ms`, or the error's name when the variant cannot run here (kept in the table)."""
    try:
        return round(bench_ms(fn, **kwargs), 4)
    except Exception as exc:  # a baseline missing on this machine must not end the run
        return f"error: {type(exc).__name__}: {str(exc)[:120]}"


def kernel_ms(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """GPU time per call of every kernel `fn` launches (torch profiler, `repeats` calls after
    the caller's warm-up), slowest first."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    times = {
        e.key: e.self_device_time_total / 1e3 / repeats
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CUDA
    }
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def report(record: dict[str, Any], rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print the record (with `rows`) as one JSON line, then `rows` as a plain-text table."""
    print(json.dumps({**record, "rows": list(rows)}))
    widths = [max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_cell(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)
