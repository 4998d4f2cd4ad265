"""In-process timing of the attention backends, behind `slatte bench` (GPU figures: benchmarks/)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .ops.attention import attention, check_backend
from .ops.sla.config import SLAConfig


def median_ms(
    fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 10
) -> float:
    """Median milliseconds of `fn()` after `warmup` calls: CUDA events on GPUs (device work is
    asynchronous), the host clock elsewhere."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def time_attention(
    backends: list[str],
    *,
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    sla: SLAConfig,
    device: str,
    dtype: torch.dtype,
    backward: bool = False,
    repeats: int = 10,
) -> dict[str, Any]:
    """Median time (ms) of each backend on the same random (B, H, N, D) inputs, plus ratios."""
    for name in backends:
        check_backend(name)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, seq_len, head_dim, generator=gen)
        .to(dev, dtype)
        .requires_grad_(backward)
        for _ in range(3)
    )
    proj_w = (0.02 * torch.randn(head_dim, head_dim, generator=gen)).to(dev)
    proj_b = torch.zeros(head_dim, device=dev)
    times: dict[str, float] = {}
    for name in backends:

        def call(name=name):
            out = attention(q, k, v, backend=name, sla=sla, proj_weight=proj_w, proj_bias=proj_b)
            if backward:
                out.backward(torch.ones_like(out))

        # One warm-up call keeps compilation and autotuning out of the figures.
        times[name] = median_ms(call, dev, warmup=1, repeats=repeats)
    base = backends[0]
    return {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "shape": {"B": batch, "H": heads, "N": seq_len, "D": head_dim},
        "dtype": str(dtype).removeprefix("torch."),
        "pass": "forward+backward" if backward else "forward",
        "sla": sla.to_dict(),
        "ms": times,
        f"speedup_vs_{base}": {name: times[base] / t for name, t in times.items()},
    }
