"""What a coarser SLA block map costs: attention error against dense attention at key blocks of
64 and 128 rows (and query blocks of 64 and 128), for the same fraction of kept keys.

    python studies/sla_block_size.py --out docs/results/sla_block_size.json \
        --figure docs/sla_block_size.png

q, k, v come from every attention layer of the shipped full-attention model
(`latte-digits-full-sla`, 4,096 tokens, head dim 32) on noised held-out clips at several
timesteps, captured with forward hooks while the model runs with its own SLA. For each block
shape and each number of critical blocks, the sparse branch alone (no linear branch) and the
whole SLA op with the model's trained projection are compared with dense attention on the same
q, k, v: relative L2 error, averaged over layers, timesteps and clips. "Kept" is the fraction of
key rows each query attends to exactly (critical blocks x block rows / N), so the two block sizes
are compared at equal sparse-branch FLOPs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import real_set
from slatte.diffusion import create_diffusion
from slatte.models import load_model
from slatte.ops import attention
from slatte.ops.sla.config import SLAConfig
from slatte.pretrained import pretrained_dir

# (block_q, block_k) and the critical block counts tried with each (kept keys 1.6% - 25%).
BLOCK_SHAPES = {(64, 64): (1, 2, 3, 4, 6, 8, 16), (64, 128): (1, 2, 3, 4, 8),
                (128, 128): (1, 2, 3, 4, 8)}  # fmt: skip
TIMESTEPS = (250, 750)


def capture_qkv(model, clips: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(q, k, v) of every SLA attention call while the model denoises `clips` at TIMESTEPS."""
    captured: list[tuple[torch.Tensor, ...]] = []
    hooks = [
        block.attn.sla.register_forward_hook(
            lambda _m, args, _out: captured.append(tuple(a.detach() for a in args[:3]))
        )
        for block in model.blocks
    ]
    diffusion = create_diffusion()
    try:
        for step in TIMESTEPS:
            t = torch.full((clips.shape[0],), step)
            noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(step))
            labels = torch.arange(clips.shape[0]) % model.config.num_classes
            with torch.no_grad():
                model(diffusion.q_sample(clips, t, noise), t, labels)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def relative_error(out: torch.Tensor, dense: torch.Tensor) -> float:
    # Per clip and head, then averaged: one badly served head is not hidden by the others.
    diff = (out - dense).flatten(2).norm(dim=-1)
    return float((diff / dense.flatten(2).norm(dim=-1).clamp_min(1e-12)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/results/sla_block_size.json")
    p.add_argument("--figure", default=None, help="PNG of error against kept keys")
    p.add_argument("--num-clips", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model(pretrained_dir("latte-digits-full-sla")).eval()
    layers = capture_qkv(model, real_set(model, args.num_clips))
    n = layers[0][0].shape[2]
    rows = []
    torch.set_grad_enabled(False)
    for (bq, bk), counts in BLOCK_SHAPES.items():
        for n_crit in counts:
            errors = {"sparse": [], "sla": []}
            for (q, k, v), block in zip(
                layers, [b for _ in TIMESTEPS for b in model.blocks], strict=True
            ):
                dense = attention(q, k, v, backend="sdpa")
                proj = block.attn.sla.proj_l
                sparse_cfg = SLAConfig(critical=n_crit, negligible=0, block_q=bq, block_k=bk)
                sla_cfg = SLAConfig(critical=n_crit, negligible=0.10, block_q=bq, block_k=bk)
                sparse = attention(q, k, v, backend="sla_reference", sla=sparse_cfg)
                sla = attention(q, k, v, backend="sla_reference", sla=sla_cfg,
                                proj_weight=proj.weight, proj_bias=proj.bias)  # fmt: skip
                errors["sparse"].append(relative_error(sparse, dense))
                errors["sla"].append(relative_error(sla, dense))
            row = {"block_q": bq, "block_k": bk, "critical_blocks": n_crit,
                   "kept": round(min(n_crit * bk, n) / n, 4),
                   **{f"{name}_error": round(sum(e) / len(e), 4) for name, e in errors.items()}}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {"model": "latte-digits-full-sla", "tokens": n, "head_dim": layers[0][0].shape[-1],
              "layers": len(model.blocks), "timesteps": list(TIMESTEPS), "clips": args.num_clips,
              "projection_trained_at": [model.config.sla.block_q, model.config.sla.block_k],
              "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, name in zip(axes, ("sparse", "sla"), strict=True):
            for bq, bk in BLOCK_SHAPES:
                pts = [(r["kept"], r[f"{name}_error"]) for r in rows
                       if (r["block_q"], r["block_k"]) == (bq, bk)]  # fmt: skip
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"blocks {bq}x{bk}")
            ax.set_xscale("log")
            ax.set_xlabel("kept keys (fraction of N)")
            ax.set_title("sparse branch alone" if name == "sparse" else "SLA, trained projection")
        axes[0].set_ylabel("relative L2 error vs dense")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
