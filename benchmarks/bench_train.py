"""Training-step throughput of Latte-XL/2 (16 frames of 32×32×4 latents, Latte's 256² setting).

Compares, in one process on one GPU, slatte's VideoDiT against the official Latte model
(Vchitect/Latte `models/latte.py`, read from a folder given with --official; never committed).
Every variant runs the same step: the hybrid diffusion loss (slatte's implementation, the same
for all, so that the models are what is compared), backward, AdamW, EMA update.
Prints one JSON object and a table: step time, clips/s, model TFLOP/s and MFU.

    python benchmarks/bench_train.py --official .external/latte_official
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path

import torch
import triton

from common import bench_ms
from slatte.diffusion import create_diffusion
from slatte.models import VideoDiT, model_config
from slatte.training.ema import update_ema

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 datasheet figures (SXM)


def load_official(folder: Path):
    """The official `Latte` class from a copy of Vchitect/Latte's models/latte.py."""
    spec = importlib.util.spec_from_file_location("latte_official", folder / "latte.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["latte_official"] = module
    spec.loader.exec_module(module)
    return module.Latte


def make_step(model, *, batch, precision, compile_model):
    device = torch.device("cuda")
    diffusion = create_diffusion(learn_sigma=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = torch.compile(model) if compile_model else model
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 16, 4, 32, 32, device=device, generator=gen)
    y = torch.randint(0, 101, (batch,), device=device, generator=gen)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step():
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = diffusion.training_losses(lambda x, tt: net(x, tt, y), x0, t)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, 0.9999)

    return step


def measure(step, *, flops_per_step, batch, peak):
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = bench_ms(step, warmup_ms=200, rep_ms=2000)
    tflops = flops_per_step / (ms * 1e-3) / 1e12
    return {
        "step_ms": round(ms, 2),
        "clips_per_s": round(batch / (ms * 1e-3), 2),
        "model_tflops": round(tflops, 1),
        "mfu": round(tflops / peak, 4),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None, help="folder with official latte.py")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0)
    cfg = model_config("Latte-XL/2", num_classes=101)
    results: dict[str, dict] = {}
    flops = None

    variants = [("slatte bf16 eager", "slatte", "bf16", False)]
    if not args.no_compile:
        variants.append(("slatte bf16 compiled", "slatte", "bf16", True))
    if args.official is not None:
        variants += [
            ("official fp32 math (its default)", "math", "fp32", False),
            ("official bf16 sdpa ('flash')", "flash", "bf16", False),
        ]
    for label, kind, precision, compiled in variants:
        torch.manual_seed(0)
        if kind == "slatte":
            model = VideoDiT(cfg).cuda()
        else:
            Latte = load_official(args.official)
            model = Latte(
                input_size=32,
                num_frames=16,
                in_channels=4,
                num_classes=101,
                learn_sigma=True,
                extras=2,
                attention_mode=kind,
                depth=28,
                hidden_size=1152,
                num_heads=16,
                patch_size=2,
            ).cuda()
        model.train()
        if flops is None:
            flops = 3 * VideoDiT(cfg).flops_per_sample() * args.batch  # fwd + bwd ≈ 3× fwd
        step = make_step(model, batch=args.batch, precision=precision, compile_model=compiled)
        try:
            results[label] = measure(step, flops_per_step=flops, batch=args.batch, peak=peak)
        except Exception as err:  # keep the other variants' figures; say what failed
            results[label] = {"error": f"{type(err).__name__}: {err}"[:300]}
        del model, step
        torch.cuda.empty_cache()

    ok = {k: v for k, v in results.items() if "error" not in v}
    base_key = next((k for k in ok if k.startswith("official fp32")), None)
    if base_key:
        for r in results.values():
            r["speedup_vs_official_default"] = round(results[base_key]["step_ms"] / r["step_ms"], 2)
    best_official = min(
        (v["step_ms"] for k, v in results.items() if k.startswith("official")), default=None
    )
    if best_official:
        for r in results.values():
            r["speedup_vs_best_official"] = round(best_official / r["step_ms"], 2)
    out = {
        "benchmark": "train_step",
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "model": "Latte-XL/2, 16x32x32x4, 101 classes",
        "batch": args.batch,
        "peak_tflops_assumed": peak,
        "results": results,
    }
    print(json.dumps(out))
    print(f"\n{'variant':38s} {'ms/step':>9s} {'clips/s':>8s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for k, r in ok.items():
        print(
            f"{k:38s} {r['step_ms']:9.2f} {r['clips_per_s']:8.2f} {r['model_tflops']:8.1f} "
            f"{100 * r['mfu']:5.1f}%"
        )


if __name__ == "__main__":
    main()
