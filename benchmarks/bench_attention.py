"""SLA attention speed: slatte's fused op against dense SDPA, FlexAttention and the official SLA.

All in one process on one GPU, bf16, random normal inputs, medians of `do_bench`:
- ours: the full op (block map + sparse and linear branch + projection), forward and
  forward+backward, each linear scope, block_q 64 and 128, on each kernel family that serves the
  call ("triton"; "hopper", FlashAttention-4's block-sparse kernels for the sparse branch, with
  128 x 128 blocks, and 128 x 64 without gradients);
- FlashAttention-4 itself (`flash-attn-4`), block-sparse over our 128 x 128 map (the sparse
  branch alone) and dense;
- SDPA dense: FlashAttention-2 and cuDNN backends;
- FlexAttention with our block map (sparse branch only, no map prediction, no linear branch);
- the official SLA modules (`main` and `SLA-1` branches), when their folders are given;
- sweeps of N (8K-128K) and of the critical fraction (2%-20%) for ours.
Prints one JSON line and a table.

    python benchmarks/bench_attention.py \
        --official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1

`--quick` keeps only ours at the reference shape (`--d 64` or `--d 72` for another head dim);
`--label` tags its rows, e.g. when another tree's `slatte` is put first on PYTHONPATH to compare
builds:

    python benchmarks/bench_attention.py --quick --d 64 --block-q 64,128 --label other
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import slatte
from common import environment, report, try_bench
from slatte.ops import SLAConfig, sla_block_map, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy

B, H, N = 1, 12, 32760
D = 128  # --d


def load_official(folder: Path, name: str):
    """The official `SparseLinearAttention` class from a folder holding its package."""
    pkg = folder / "sparse_linear_attention"
    spec = importlib.util.spec_from_file_location(
        name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.SparseLinearAttention


def inputs(n: int, grad: bool):
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    if grad:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    return q, k, v, torch.randn_like(q)


def fwd_and_fwdbwd(fn, n: int) -> tuple[float | str, float | str]:
    """Times of fn(q, k, v) alone and with the backward to q, k, v (and fn's own parameters)."""
    q, k, v, do = inputs(n, grad=False)

    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    qg, kg, vg, _ = inputs(n, grad=True)

    def fwdbwd():
        fn(qg, kg, vg).backward(do)

    return try_bench(fwd), try_bench(fwdbwd, grad_to_none=[qg, kg, vg])


def ours(critical: float, block_q: int, scope: str, block_k: int = 64, kernels: str = "auto"):
    proj = torch.nn.Linear(D, D, device="cuda")  # nonzero, so the linear branch is all there
    config = SLAConfig(critical=critical, block_q=block_q, block_k=block_k, linear_scope=scope)
    policy = LaunchPolicy(kernels=kernels)

    def fn(q, k, v):
        return sparse_linear_attention(q, k, v, proj.weight, proj.bias, config, policy=policy)

    return fn


def fa4_sparse_with_our_map(n: int, critical: float):
    """FlashAttention-4's block-sparse kernels over the critical blocks of our 128 x 128 map
    (computed once, outside the timing): the sparse branch alone, (B, N, H, D) views."""
    from slatte.ops.sla.block_map import block_scores, classify
    from slatte.ops.sla.config import block_counts
    from slatte.ops.sla.hopper.fa4 import sparse_backward, sparse_forward

    q, k, _, _ = inputs(n, grad=False)
    n_crit, n_negl = block_counts(critical, 0.10, -(-n // 128))
    bmap, lut = classify(block_scores(q, k, 128, 128), n_crit, n_negl)
    scale = D**-0.5

    class Sparse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            o = torch.empty_like(q)
            lse = q.new_empty(q.shape[:3], dtype=torch.float32)
            sparse_forward(q, k, v, lut, bmap, 128, 128, scale, o, lse)
            ctx.save_for_backward(q, k, v, o, lse)
            return o

        @staticmethod
        def backward(ctx, do):
            q, k, v, o, lse = ctx.saved_tensors
            dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
            sparse_backward(
                do.contiguous(), q, k, v, o, lse, lut, bmap, 128, 128, scale, dq, dk, dv
            )
            return dq, dk, dv

    return Sparse.apply


def fa4_dense():
    from flash_attn.cute.interface import flash_attn_func

    def fn(q, k, v):
        out = flash_attn_func(*(x.transpose(1, 2) for x in (q, k, v)))
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    return fn


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def flex_with_our_map(n: int, critical: float, block_q: int, block_k: int = 64):
    """FlexAttention over the critical blocks of our map (computed once, outside the timing)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    q, k, _, _ = inputs(n, grad=False)
    bmap = sla_block_map(q, k, SLAConfig(critical=critical, block_q=block_q, block_k=block_k))
    crit = bmap == 1
    counts = crit.sum(-1, dtype=torch.int32)
    indices = torch.sort((~crit).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    mask = BlockMask.from_kv_blocks(
        counts, indices.contiguous(), BLOCK_SIZE=(block_q, block_k), seq_lengths=(n, n)
    )
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def official(cls, critical: float, block_q: int):
    module = cls(D, topk=critical, BLKQ=block_q, BLKK=64).cuda()
    torch.nn.init.normal_(module.proj_l.weight, std=D**-0.5)  # nonzero, as after fine-tuning
    return lambda q, k, v: module(q, k, v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-main", type=Path, help="folder with SLA main's package")
    parser.add_argument("--official-sla1", type=Path, help="folder with SLA-1's package")
    parser.add_argument("--no-sweep", action="store_true", help="only the reference shape")
    parser.add_argument("--quick", action="store_true", help="only ours, reference shape")
    parser.add_argument(
        "--d",
        type=int,
        default=128,
        choices=(64, 72, 128),
        help="head dim (72, the released diffusers Latte's: Triton family only, other rows error)",
    )
    parser.add_argument("--block-q", default="128,64", help="comma list of block_q for ours")
    parser.add_argument("--label", default="", help="tag of our rows (e.g. which tree)")
    args = parser.parse_args()
    global D
    D = args.d
    block_qs = [int(x) for x in args.block_q.split(",")]

    rows = []

    def add(name, n, critical, block_q, times, **extra):
        fwd, fwdbwd = times
        dense_flops = 4 * B * H * n * n * D
        row = dict(impl=name, N=n, critical=critical, block_q=block_q, fwd_ms=fwd, fwdbwd_ms=fwdbwd)
        if isinstance(fwd, float):
            row["fwd_eff_tflops"] = round(dense_flops / fwd * 1e-9, 1)
        row.update(extra)
        rows.append(row)
        print(row, flush=True)

    scopes = ("marginal",) if args.quick else ("marginal", "noncritical", "all")
    tag = f"/{args.label}" if args.label else ""
    if args.label:
        print(f"{args.label}: slatte from {Path(slatte.__file__).parent}", flush=True)
    for block_q in block_qs:
        for scope in scopes:
            times = fwd_and_fwdbwd(ours(0.05, block_q, scope, kernels="triton"), N)
            add(f"slatte-triton[{scope}]{tag}", N, 0.05, block_q, times, block_k=64)
    if 128 in block_qs:
        for scope in scopes:
            for kernels in ("triton", "hopper"):
                times = fwd_and_fwdbwd(ours(0.05, 128, scope, 128, kernels), N)
                add(f"slatte-{kernels}[{scope}]{tag}", N, 0.05, 128, times, block_k=128)
        times = fwd_and_fwdbwd(ours(0.05, 128, "marginal", 64, "hopper"), N)
        add(f"slatte-hopper[marginal]{tag}", N, 0.05, 128, times, block_k=64)
    if args.quick:
        record = {"benchmark": "sla_attention", "shape": dict(B=B, H=H, N=N, D=D), **environment()}
        report(record, rows, ["impl", "N", "critical", "block_q", "block_k", "fwd_ms", "fwdbwd_ms"])
        return
    add("sdpa-flash2", N, 1.0, None, fwd_and_fwdbwd(sdpa(torch.nn.attention.SDPBackend.FLASH_ATTENTION), N))  # fmt: skip
    add("sdpa-cudnn", N, 1.0, None, fwd_and_fwdbwd(sdpa(torch.nn.attention.SDPBackend.CUDNN_ATTENTION), N))  # fmt: skip
    for block_k in (64, 128):
        try:
            flex = flex_with_our_map(N, 0.05, 128, block_k)
            add(
                "flex[our map, sparse only]", N, 0.05, 128, fwd_and_fwdbwd(flex, N), block_k=block_k
            )
        except Exception as exc:  # FlexAttention's block-mask API varies between torch versions
            rows.append(dict(impl="flex[our map]", N=N, fwd_ms=f"error: {exc!s:.120}"))
    try:
        fa4 = fa4_sparse_with_our_map(N, 0.05)
        add("flash-attn-4[our map, sparse only]", N, 0.05, 128, fwd_and_fwdbwd(fa4, N), block_k=128)
        add("flash-attn-4[dense]", N, 1.0, None, fwd_and_fwdbwd(fa4_dense(), N))
    except ImportError as exc:
        rows.append(dict(impl="flash-attn-4", N=N, fwd_ms=f"not installed: {exc!s:.120}"))
    for flag, name in (
        (args.official_main, "official-main"),
        (args.official_sla1, "official-SLA-1"),
    ):
        if flag is not None:
            cls = load_official(flag, name.replace("-", "_"))
            for block_q in (128, 64):
                add(name, N, 0.05, block_q, fwd_and_fwdbwd(official(cls, 0.05, block_q), N))
    if not args.no_sweep:
        for n in (8192, 16384, 65536, 131072):
            add("slatte[marginal]", n, 0.05, 128, fwd_and_fwdbwd(ours(0.05, 128, "marginal"), n))
        for critical in (0.02, 0.10, 0.20):
            add("slatte[marginal]", N, critical, 128, fwd_and_fwdbwd(ours(critical, 128, "marginal"), N))  # fmt: skip

    record = {"benchmark": "sla_attention", "shape": dict(B=B, H=H, N=N, D=D), **environment()}
    cols = ["impl", "N", "critical", "block_q", "block_k", "fwd_ms", "fwdbwd_ms", "fwd_eff_tflops"]
    report(record, rows, cols)


if __name__ == "__main__":
    main()
