"""Time per denoising step: CFG alone, CFG + STG forked, CFG + STG as a naive third pass.

Models (random weights): a Latte-XL/2-shaped DiT on 16 × 32 × 32 × 4 latents (alternating
spatial / temporal blocks, 101 classes), and a full-attention DiT of Wan2.1-1.3B's shape (30
blocks, width 1536, 12 heads, FFN 8960, 32,760 tokens, cross-attention to 512 text tokens of
width 4096). The token grid of the Wan-shaped model is 910 frames × 6 × 6 patches: its blocks
attend over all tokens jointly, so only the token count matters for the cost. (Its parameter
count, 1.83 B, exceeds Wan's 1.3 B by the per-block adaLN projections, which act once per sample,
not per token: the per-token compute matches.)

For each model, one perturbed block early, in the middle and late (10%, 50%, 90% of the depth).
Goal (issue 4): CFG+STG forked costs at most (2 + (N - L)/N) / 2 of a CFG step, plus 5% of it,
for perturbed block L of N; the naive third pass costs 1.5 CFG steps.

    python benchmarks/bench_guidance.py                 # GPU, bf16, both models
    python benchmarks/bench_guidance.py --smoke         # tiny shapes, any device (a dry run)

Prints one JSON object (device, versions, every time and ratio) and a table.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch

from slatte.bench import median_ms
from slatte.guidance import STG, guided_model_fn
from slatte.models import VideoDiT, VideoDiTConfig, model_config

CFG_SCALE = 4.0
DEPTH_FRACTIONS = {"early": 0.1, "middle": 0.5, "late": 0.9}


def model_shapes(smoke: bool) -> dict[str, tuple[VideoDiTConfig, int | None]]:
    """name → (config, text length or None for a class-conditional model)."""
    if smoke:
        return {
            "latte-tiny": (model_config("Latte-T/2", depth=4), None),
            "full-tiny": (
                VideoDiTConfig(
                    input_size=8,
                    num_frames=4,
                    in_channels=4,
                    hidden_size=64,
                    depth=4,
                    num_heads=2,
                    block_pattern="full",
                    learn_sigma=False,
                    text_dim=16,
                ),
                8,
            ),
        }
    return {
        "latte-xl-2": (model_config("Latte-XL/2", num_classes=101), None),
        "wan2.1-1.3b-shape": (
            VideoDiTConfig(
                input_size=12,
                num_frames=910,
                in_channels=16,
                hidden_size=1536,
                depth=30,
                num_heads=12,
                patch_size=2,
                mlp_ratio=8960 / 1536,
                block_pattern="full",
                learn_sigma=False,
                text_dim=4096,
                qk_norm=True,
            ),
            512,
        ),
    }


@torch.inference_mode()
def bench_model(
    name: str,
    config: VideoDiTConfig,
    text_len: int | None,
    *,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
) -> dict:
    gen = torch.Generator().manual_seed(0)
    with device:
        model = VideoDiT(config).eval()
        # adaLN-Zero and the final layer start at zero, so every output would be zero; random
        # values there give the forked-vs-naive check something to compare (timings don't care).
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.02)
        model = model.to(dtype)
    shape = (batch, config.num_frames, config.in_channels, config.input_size, config.input_size)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    t = torch.full((batch,), 500, device=device)
    cond: dict[str, torch.Tensor] = {}
    if text_len is None:
        cond["y"] = torch.randint(0, config.num_classes, (batch,), generator=gen).to(device)
    else:
        text_shape = (batch, text_len, config.text_dim)
        cond["text"] = torch.randn(text_shape, generator=gen).to(device, dtype)
        # An encoded negative prompt of the same length, as Wan pads both to 512 tokens.
        cond["null_text"] = torch.randn(text_shape, generator=gen).to(device, dtype)

    def time_ms(fn: Callable[[], object]) -> float:
        return median_ms(fn, device, warmup=warmup, repeats=repeats)

    depth = config.depth

    cfg_fn = guided_model_fn(model, cfg_scale=CFG_SCALE, **cond)
    cfg_ms = time_ms(lambda: cfg_fn(x, t))
    rows = []
    for where, fraction in DEPTH_FRACTIONS.items():
        block = min(depth - 1, round(fraction * depth))
        stg = [STG(1.0, (block,))]
        forked_fn = guided_model_fn(model, cfg_scale=CFG_SCALE, stg=stg, **cond)
        naive_fn = guided_model_fn(model, cfg_scale=CFG_SCALE, stg=stg, fork=False, **cond)
        forked_ms, naive_ms = (
            time_ms(lambda f=forked_fn: f(x, t)),
            time_ms(lambda f=naive_fn: f(x, t)),
        )
        difference = (forked_fn(x, t).float() - naive_fn(x, t).float()).abs().max().item()
        bound = (2 + (depth - block) / depth) / 2
        rows.append(
            {
                "where": where,
                "block": block,
                "kind": model.blocks[block].kind,
                "forked_ms": forked_ms,
                "naive_ms": naive_ms,
                "forked_ratio": forked_ms / cfg_ms,
                "naive_ratio": naive_ms / cfg_ms,
                "bound": bound,
                "meets_goal": forked_ms / cfg_ms <= bound + 0.05,
                "max_abs_diff_forked_vs_naive": difference,
            }
        )
    return {
        "model": name,
        "depth": depth,
        "tokens": config.num_frames * config.patches_per_frame,
        "batch": batch,
        "cfg_ms": cfg_ms,
        "stg": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (a dry run, any device)")
    parser.add_argument("--batch", type=int, default=1, help="samples per step (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="default: bf16 on CUDA, fp32 elsewhere",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=None, help="comma list of model names (default: all)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    shapes = model_shapes(args.smoke)
    names = args.models.split(",") if args.models else list(shapes)
    unknown = sorted(set(names) - set(shapes))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(shapes)}")

    results = []
    for n in names:
        results.append(
            bench_model(
                n,
                *shapes[n],
                batch=args.batch,
                device=device,
                dtype=dtype,
                warmup=args.warmup,
                repeats=args.repeats,
            )
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next model gets the memory of this one's weights
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "benchmark": "guidance",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
        "dtype": dtype_name,
        "cfg_scale": CFG_SCALE,
        "results": results,
    }
    print(json.dumps(report))
    print()
    print(
        f"{'model':<20} {'block':>12} {'CFG ms':>9} {'forked ms':>10} {'naive ms':>9} "
        f"{'forked/CFG':>10} {'bound':>6} {'naive/CFG':>9}  goal"
    )
    for res in results:
        for row in res["stg"]:
            print(
                f"{res['model']:<20} {row['block']:>3} {row['kind']:<8} {res['cfg_ms']:>9.2f} "
                f"{row['forked_ms']:>10.2f} {row['naive_ms']:>9.2f} {row['forked_ratio']:>10.3f} "
                f"{row['bound']:>6.3f} {row['naive_ratio']:>9.3f}  "
                f"{'met' if row['meets_goal'] else 'MISSED'}"
            )


if __name__ == "__main__":
    main()
