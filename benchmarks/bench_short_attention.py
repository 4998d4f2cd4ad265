"""Attention over many short sequences (Latte's temporal blocks): SDPA against a plain
batched matmul + softmax, forward and forward+backward.

A temporal block of Latte-digits at batch 128 attends over 16 frames for each of 128 × 256
tokens and 4 heads: 131,072 sequences of 16. The training profile (benchmarks/NOTES.md) shows
SDPA's kernels spending ~16 ms per step there for a few GFLOP; this measures whether the plain
formula (an N × N score matrix is tiny at N = 16) is faster, and from which N on it is not.

    python benchmarks/bench_short_attention.py                 # GPU, bf16
    python benchmarks/bench_short_attention.py --smoke         # tiny shapes on the CPU

Prints one JSON line and a table; checks the two outputs agree before timing.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import environment, report, try_bench

# (sequences, heads, length, head dim): Latte-digits temporal / spatial, Latte-XL/2 temporal
SHAPES = [(32768, 4, 16, 32), (2048, 4, 256, 32), (2048, 16, 16, 72), (8192, 6, 32, 64)]


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.float().softmax(dim=-1).to(q.dtype) @ v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shapes = SHAPES if cuda else [(64, 2, 16, 8), (8, 2, 64, 8)]
    rows = []
    for b, h, n, d in shapes:
        q, k, v = (
            torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        grad = torch.randn(b, h, n, d, device=device, dtype=dtype)
        with torch.no_grad():
            ref = F.scaled_dot_product_attention(q, k, v)
            err = float((matmul_attention(q, k, v) - ref).abs().max())
        row = {"shape": f"{b}x{h}x{n}x{d}", "max_abs_diff": err}
        for name, fn in (("sdpa", F.scaled_dot_product_attention), ("matmul", matmul_attention)):

            def fwd(fn=fn, qkv=(q, k, v)):
                with torch.no_grad():
                    fn(*qkv)

            def fwd_bwd(fn=fn, qkv=(q, k, v), grad=grad):
                torch.autograd.grad(fn(*qkv), qkv, grad)

            if cuda:
                row[f"{name}_fwd_ms"] = try_bench(fwd)
                row[f"{name}_fwdbwd_ms"] = try_bench(fwd_bwd)
            else:  # the smoke run only proves the script works
                fwd(), fwd_bwd()
        rows.append(row)
    columns = ["shape", "max_abs_diff", "sdpa_fwd_ms", "matmul_fwd_ms", "sdpa_fwdbwd_ms"]
    report(
        {"benchmark": "short_sequence_attention", **environment()},
        rows,
        [*columns, "matmul_fwdbwd_ms"],
    )


if __name__ == "__main__":
    main()
