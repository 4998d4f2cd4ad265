"""In-process timing of the attention backends, behind `slatte bench` (GPU figures: benchmarks/)."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch

from .ops.attention import attention, check_backend
from .ops.sla.config import SLAConfig


def _timer(device: torch.device):
    """Seconds of one call of fn: CUDA events on GPUs (device work is asynchronous)."""
    if device.type == "cuda":

        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
    else:

        def run(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    return run


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
    timer = _timer(dev)
    times: dict[str, float] = {}
    for name in backends:

        def call(name=name):
            out = attention(q, k, v, backend=name, sla=sla, proj_weight=proj_w, proj_bias=proj_b)
            if backward:
                out.backward(torch.ones_like(out))

        call()  # warm-up: compilation and autotuning stay out of the figures
        times[name] = 1e3 * statistics.median(timer(call) for _ in range(repeats))
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
