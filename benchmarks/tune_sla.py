"""Try tile sizes / warps / pipeline depths of the SLA kernels at the reference shape.

Prints the forward and forward+backward time of each candidate (through
`triton_op.CONFIG_OVERRIDES`), best last; the winners become `_configs`' defaults.

    python benchmarks/tune_sla.py --d 128 --block-q 128
"""

from __future__ import annotations

import argparse

import torch

from common import environment, report, try_bench
from slatte.ops import sparse_linear_attention
from slatte.ops.sla import triton_op

FWD = [dict(fwd_m=m, fwd_warps=w, fwd_stages=s) for m, w, s in
       [(64, 4, 2), (64, 4, 3), (128, 8, 2), (128, 8, 3), (128, 8, 4), (128, 4, 3)]]  # fmt: skip
BWD = [
    dict(dq_m=a, dq_n=b, dq_warps=c, dq_stages=d, dkdv_m=e, dkdv_n=f, dkdv_warps=g, dkdv_stages=h)
    for a, b, c, d, e, f, g, h in [
        (64, 64, 4, 2, 64, 64, 4, 2),
        (64, 64, 4, 3, 64, 64, 4, 3),
        (128, 64, 8, 2, 64, 128, 8, 2),
        (64, 64, 8, 2, 32, 128, 8, 2),
        (128, 32, 8, 2, 64, 64, 8, 2),
        (64, 32, 4, 2, 32, 64, 4, 2),
    ]
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--block-q", type=int, default=128)
    parser.add_argument("--n", type=int, default=32760)
    args = parser.parse_args()
    d = args.d
    q, k, v = (torch.randn(1, 12, args.n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    proj = torch.nn.Linear(d, d, device="cuda")
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    do = torch.randn_like(q)

    def call(q, k, v):
        return sparse_linear_attention(
            q, k, v, proj.weight, proj.bias, block_q=args.block_q, block_k=64
        )

    def fwd():
        with torch.no_grad():
            call(q, k, v)

    def fwdbwd():
        call(qg, kg, vg).backward(do)

    rows = []
    for cfg in FWD:
        triton_op.CONFIG_OVERRIDES[d] = cfg
        rows.append(dict(kind="fwd", cfg=cfg, ms=try_bench(fwd)))
    best_fwd = min((r for r in rows if isinstance(r["ms"], float)), key=lambda r: r["ms"])
    for cfg in BWD:
        triton_op.CONFIG_OVERRIDES[d] = {**best_fwd["cfg"], **cfg}
        rows.append(dict(kind="fwd+bwd", cfg=cfg, ms=try_bench(fwdbwd)))
    triton_op.CONFIG_OVERRIDES.clear()
    rows.sort(key=lambda r: (r["kind"], -r["ms"] if isinstance(r["ms"], float) else 0))
    report({"benchmark": "tune_sla", "d": d, "block_q": args.block_q, **environment()}, rows,
           ["kind", "cfg", "ms"])  # fmt: skip


if __name__ == "__main__":
    main()
