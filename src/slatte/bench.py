"""In-process timing of the attention backends, behind `slatte bench` (GPU figures: benchmarks/)."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .ops.attention import attention
from .ops.backends import BACKENDS, check_backend
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


def ran(backend: str, device: torch.device) -> str:
    """What a backend runs on `device`: "sla" is the fused Triton kernel on CUDA and the PyTorch
    reference elsewhere (`ops.attention.attention`)."""
    if backend == "sla":
        return "sla: Triton kernel" if device.type == "cuda" else "sla: PyTorch reference (no CUDA)"
    return backend


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
    progress: bool = False,
) -> dict[str, Any]:
    """Median time (ms) of each backend on the same random (B, H, N, D) inputs, plus ratios
    and the implementation that ran for each; `progress` reports each backend on stderr."""
    if not backends:
        raise ValueError(f"give at least one attention backend (one of {BACKENDS})")
    for name in backends:
        check_backend(name)
    shape = {"batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim}
    for what, value in {**shape, "repeats": repeats}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
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

        if progress:
            print(f"bench: {name} ({ran(name, dev)}) ...", end=" ", file=sys.stderr, flush=True)
        # One warm-up call keeps compilation and autotuning out of the figures.
        times[name] = median_ms(call, dev, warmup=1, repeats=repeats)
        if progress:
            print(f"{times[name]:.3f} ms", file=sys.stderr, flush=True)
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
        "ran": {name: ran(name, dev) for name in backends},
        "ms": times,
        f"speedup_vs_{base}": {name: times[base] / t for name, t in times.items()},
    }
