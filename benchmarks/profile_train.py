"""Where a training step of a small model spends its time: data, host, or GPU kernels.

Builds the real `Trainer` (moving digits, bf16 on CUDA) and runs steps in three ways, each timed
per step after a warm-up: (1) `next(loader)` alone (the data pipeline), (2) whole steps as
`Trainer.fit` runs them, (3) the same steps under `torch.profiler`, which gives the GPU kernel
time per step and the top kernels and host functions. GPU time well below the step time means
the step is bound by the host (Python, launches, data), not by the model.

    python benchmarks/profile_train.py                       # Latte-digits, batch 128
    python benchmarks/profile_train.py --model-option depth=6 --model-option hidden_size=192
    python benchmarks/profile_train.py --smoke               # tiny, on the CPU (dry run)

Prints one JSON line and two tables (CUDA kernels, host functions by self time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from common import environment
from slatte.training import TrainConfig, Trainer


def _per_step_ms(fn, steps: int, sync: bool) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Latte-digits")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny model and batch on the CPU")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    overrides = {}
    for item in args.model_option:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            out_dir=tmp,
            model="Latte-T/2" if args.smoke else args.model,
            model_overrides=overrides,
            num_frames=4 if args.smoke else 16,
            size=16 if args.smoke else 32,
            batch_size=4 if args.smoke else args.batch_size,
            image_batch=2 if args.smoke else args.image_batch,
            num_workers=0 if args.smoke else args.workers,
            precision="bf16" if cuda else "fp32",
            compile=args.compile,
            device="cuda" if cuda else "cpu",
            steps=10**6,
        )
        trainer = Trainer(cfg)
        trainer.model.train()
        loader = iter(trainer._loader())
        images = iter(trainer._loader(images=True)) if cfg.image_batch else None

        def data():
            return next(loader), next(images) if images is not None else None

        def step():
            trainer.train_step(*data())

        for _ in range(args.warmup):
            step()
        data_ms = _per_step_ms(data, args.steps, sync=False)
        step_ms = _per_step_ms(step, args.steps, sync=cuda)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
    events = prof.key_averages()
    # Kernel rows only: an operator's row repeats the time of the kernels it launched.
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    device_us = sum(e.self_device_time_total for e in kernels)
    record = {
        "benchmark": "train_step_profile",
        **environment(),
        "model": cfg.model,
        "model_overrides": overrides,
        "batch_size": cfg.batch_size,
        "image_batch": cfg.image_batch,
        "compile": cfg.compile,
        "data_ms_per_step": round(data_ms, 2),
        "step_ms": round(step_ms, 2),
        "gpu_kernel_ms_per_step": round(device_us / 1e3 / args.steps, 2),
        "clips_per_s": round(cfg.batch_size / step_ms * 1e3, 1),
    }
    print(json.dumps(record))
    if cuda:
        print(events.table(sort_by="self_cuda_time_total", row_limit=15))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
