"""Try tile sizes / warps / pipeline depths of the SLA kernels at the reference shape.

Prints the forward (with `--forward`) and forward+backward time of each candidate (a
`LaunchPolicy` with `tile_overrides`), best last; the winners become the defaults of
`slatte.ops.sla.triton.tiles.tiles`.

    python benchmarks/tune_sla.py --d 128 --block-q 128
    python benchmarks/tune_sla.py --kernels hopper --block-k 128 --forward   # persistent kernels
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from common import environment, report, try_bench
from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy

FWD = [dict(fwd_m=m, fwd_warps=w, fwd_stages=s) for m, w, s in
       [(64, 4, 2), (64, 4, 3), (128, 8, 2), (128, 8, 3), (128, 8, 4), (128, 4, 3)]]  # fmt: skip
# The hopper family's forward runs our persistent linear epilogue and, for inference, the
# persistent per-key-block sums (`kernels_epilogue`, PERSIST): tile height, warps, pipeline depth
# (a depth whose buffers do not fit falls back to fewer, `launch`) and programs per SM.
HOPPER_FWD = [{}] + [dict(epi_m=m, epi_warps=w, epi_stages=s, epi_programs_per_sm=p)
                     for m, w, s, p in [(128, 8, 1, 1), (64, 4, 2, 1), (64, 8, 2, 1),
                                        (64, 4, 1, 2), (64, 4, 3, 1), (128, 8, 2, 2)]]  # fmt: skip
HOPPER_FWD += [dict(epi_lin_chunk=c) for c in (16, 64)]
HOPPER_FWD += [dict(sums_programs_per_sm=p, sums_stages=s) for p, s in
               [(2, 2), (1, 1), (1, 3), (2, 1)]]  # fmt: skip
# The inference forward's H_i GEMM over the block map (both families; 1.4 TB/s at the defaults):
# query-block rows x D*D columns x warps, or cuBLAS with the selection as a 0/1 matrix.
HOPPER_FWD += [dict(mask_r=r, mask_cols=c, mask_warps=w) for r, c, w in
               [(128, 128, 8), (128, 256, 8), (64, 128, 4), (128, 128, 4), (256, 64, 8),
                (64, 512, 8)]]  # fmt: skip
HOPPER_FWD += [dict(mask_cublas=True)]
# Training candidates, timed forward+backward: each changes a few knobs of the tiles' defaults
# ({} = the defaults), so every kernel is tried in context (the isolated sweeps of NOTES.md
# session 5 ranked D=64 configs differently from the full forward+backward).
TRAIN = [
    {},
    dict(fwd_lin_chunk=16),
    dict(fwd_lin_chunk=64),
    dict(dq_stages=1),
    dict(dq_stages=3),
    dict(dq_m=128, dq_warps=8, dq_stages=3),
    dict(dkdv_stages=2),
    dict(dkdv_m=32),
]
# The hopper family's dq and dk/dv kernels run only the linear branch's share (FA4 ran the sparse
# loop their tiles were tuned for): per-row work, so taller tiles and fewer stages may pay there.
HOPPER_TRAIN = TRAIN + [
    dict(dq_m=128, dq_warps=8, dq_stages=1),
    dict(dq_m=128, dq_warps=4, dq_stages=1),
    dict(dkdv_n=128, dkdv_warps=8),
    dict(dkdv_n=128, dkdv_warps=4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--block-q", type=int, default=128)
    parser.add_argument("--n", type=int, default=32760)
    parser.add_argument("--forward", action="store_true", help="also try forward tiles first")
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--kernels", default="triton", help="LaunchPolicy.kernels: triton, hopper")
    args = parser.parse_args()
    d = args.d
    q, k, v = (torch.randn(1, 12, args.n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    proj = torch.nn.Linear(d, d, device="cuda")
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    do = torch.randn_like(q)

    config = SLAConfig(block_q=args.block_q, block_k=args.block_k)

    def call(q, k, v, tiles):
        policy = LaunchPolicy(kernels=args.kernels, tile_overrides={d: tiles})
        return sparse_linear_attention(q, k, v, proj.weight, proj.bias, config, policy=policy)

    def fwd(tiles):
        with torch.no_grad():
            call(q, k, v, tiles)

    def fwdbwd(tiles):
        call(qg, kg, vg, tiles).backward(do)

    rows = []

    def add(row):  # printed as it comes: a run cut short by a time limit keeps what it timed
        rows.append(row)
        print(row, flush=True)

    for cfg in (HOPPER_FWD if args.kernels == "hopper" else FWD) if args.forward else []:
        add(dict(kind="fwd", cfg=cfg, ms=try_bench(partial(fwd, cfg))))
    timed = [r for r in rows if isinstance(r["ms"], float)]
    best_fwd = min(timed, key=lambda r: r["ms"])["cfg"] if timed else {}
    for cfg in HOPPER_TRAIN if args.kernels == "hopper" else TRAIN:
        ms = try_bench(partial(fwdbwd, {**best_fwd, **cfg}), grad_to_none=[qg, kg, vg])
        add(dict(kind="fwd+bwd", cfg=cfg, ms=ms))
    rows.sort(key=lambda r: (r["kind"], -r["ms"] if isinstance(r["ms"], float) else 0))
    report({"benchmark": "tune_sla", "d": d, "block_q": args.block_q, "block_k": args.block_k,
            "kernels": args.kernels, **environment()}, rows,
           ["kind", "cfg", "ms"])  # fmt: skip


if __name__ == "__main__":
    main()
