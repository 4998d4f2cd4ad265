"""Side-by-side check against the official SLA modules (thu-ml/SLA, read from local folders).

With the official block choice (`critical = int(ratio * Nk)` blocks, `negligible = 0`) and the
official linear scope of each branch ("noncritical" for `SLA-1`, "all" for `main`), slatte's
module, loaded with the official module's `proj_l` weights, must give the official outputs to
bf16 tolerance. The official map is pooled in bf16, ours in fp32, so near-ties can pick other
blocks: only query blocks whose map rows agree are compared (their share is printed). Prints one
JSON line and a table.

    python benchmarks/compare_official_sla.py \
        --official-main .external/sla_official_main --official-sla1 .external/sla_official_sla_1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bench_attention import load_official
from common import environment, report
from slatte.nn import SparseLinearAttention
from slatte.ops import SLAConfig, sla_block_map

# bf16 tolerance of the relative (Frobenius) error between two bf16 computations of SLA.
REL_TOL = 2e-2


def compare(cls, name: str, scope: str, n: int, d: int, ratio: float, block_q: int, feature: str):
    torch.manual_seed(0)
    heads = 4
    official = cls(d, topk=ratio, feature_map=feature, BLKQ=block_q, BLKK=64).cuda()
    torch.nn.init.normal_(official.proj_l.weight, std=d**-0.5)
    torch.nn.init.normal_(official.proj_l.bias, std=0.1)
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    nk = -(-n // 64)
    count = int(ratio * nk)
    config = SLAConfig(
        critical=count, negligible=0, block_q=block_q, block_k=64, feature_map=feature,
        linear_scope=scope,
    )  # fmt: skip
    ours = SparseLinearAttention(d, config).cuda()
    ours.load_official_state_dict(official.state_dict())
    with torch.no_grad():
        theirs_out = official(q, k, v).float()
        ours_out = ours(q, k, v).float()
        their_map = sys.modules[f"{name}.utils"].get_block_map(q, k, ratio, block_q, 64)[0]
    our_map = sla_block_map(q, k, config)
    agree = ((our_map == 1) == (their_map == 1)).all(-1)  # (B, H, Nq)
    rows = agree.repeat_interleave(block_q, dim=-1)[..., :n, None]
    diff = (ours_out - theirs_out) * rows
    rel = (diff.norm() / (theirs_out * rows).norm()).item()
    return dict(
        branch=name, scope=scope, feature=feature, N=n, D=d, block_q=block_q, critical=count,
        map_rows_agree=round(agree.float().mean().item(), 4), rel_err=rel,
        max_abs_err=diff.abs().max().item(), ok=rel < REL_TOL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-main", type=Path, help="folder with SLA main's package")
    parser.add_argument("--official-sla1", type=Path, help="folder with SLA-1's package")
    parser.add_argument("--ratio", type=float, default=0.05)
    args = parser.parse_args()
    rows = []
    for folder, name, scope in (
        (args.official_main, "official_main", "all"),
        (args.official_sla1, "official_sla1", "noncritical"),
    ):
        if folder is None:
            continue
        cls = load_official(folder, name)
        for n, d, block_q, feature in (
            (32768, 128, 128, "softmax"),
            (8192, 64, 64, "softmax"),
            (8192, 128, 128, "elu"),
        ):
            rows.append(compare(cls, name, scope, n, d, args.ratio, block_q, feature))
            print(rows[-1], flush=True)
    cols = ["branch", "scope", "feature", "N", "D", "block_q", "critical", "map_rows_agree"]
    report(
        {"benchmark": "compare_official_sla", "rel_tol": REL_TOL, **environment()},
        rows,
        [*cols, "rel_err", "max_abs_err", "ok"],
    )


if __name__ == "__main__":
    main()
