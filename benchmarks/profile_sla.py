"""Per-kernel GPU time of one SLA forward+backward: which kernel a change made slower.

    python benchmarks/profile_sla.py --d 128 --block-q 128
    python benchmarks/profile_sla.py --forward-only            # inference: the forward alone
    python benchmarks/profile_sla.py --kernels hopper --block-k 128   # the hopper family
    PYTHONPATH=.external/head_src/src:benchmarks python benchmarks/profile_sla.py  # another tree

B=1, H=12, N=32,760, bf16, 5% critical, 10% negligible, block_k 64 (`--block-k`), marginal scope,
the kernel family `--kernels` (default: what "auto" picks), a random
projection (so the linear branch and its gradients run). Prints one JSON line (kernel name →
ms per call) and the 25 slowest kernels.
"""

from __future__ import annotations

import argparse
import json

import torch

import slatte
from common import environment, kernel_ms
from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--n", type=int, default=32760)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--forward-only", action="store_true", help="time the forward, no autograd")
    p.add_argument("--block-k", type=int, default=64)
    p.add_argument("--kernels", default="auto", help="LaunchPolicy.kernels: auto, hopper, triton")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_sla.py times the Triton kernels: it needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(
            1, 12, args.n, args.d, device="cuda", dtype=torch.bfloat16, generator=gen
        ).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    proj = torch.nn.Linear(args.d, args.d, device="cuda")
    config = SLAConfig(block_q=args.block_q, block_k=args.block_k)
    policy = LaunchPolicy(kernels=args.kernels)

    def step() -> None:
        # Fresh gradients each call (as bench_attention.py times them): no accumulation kernel.
        q.grad = k.grad = v.grad = None
        with torch.set_grad_enabled(not args.forward_only):
            out = sparse_linear_attention(q, k, v, proj.weight, proj.bias, config, policy=policy)
        if not args.forward_only:
            out.backward(grad)

    for _ in range(5):
        step()
    kernels = {name: round(ms, 4) for name, ms in kernel_ms(step, args.repeats).items()}
    record = {
        "benchmark": "sla_kernel_profile",
        **environment(),
        "slatte": slatte.__file__,
        "shape": [1, 12, args.n, args.d],
        "block_q": args.block_q,
        "block_k": args.block_k,
        "kernels": args.kernels,
        "pass": "forward" if args.forward_only else "forward+backward",
        "ms_per_call": kernels,
        "total_ms": round(sum(kernels.values()), 4),
    }
    print(json.dumps(record))
    for name, ms in list(kernels.items())[:25]:
        print(f"{ms:9.4f}  {name[:110]}")


if __name__ == "__main__":
    main()
