"""Scaling over GPUs: FSDP2 training throughput and Ulysses sequence-parallel SLA attention.

Run without torchrun; it launches itself under `torchrun --standalone` once per GPU count
(1, then each of --gpus) and compares, in one report, N GPUs against 1:

    python benchmarks/bench_distributed.py --gpus 2                 # both parts
    python benchmarks/bench_distributed.py --gpus 2,4,8 --skip-train  # attention only

1. Training: Latte-XL/2 on 16 frames of 32×32×4 latents (Latte's 256² setting), bf16, the
   hybrid diffusion loss, backward, AdamW, EMA; --batch clips per GPU (the global batch grows
   with the GPU count, as in data-parallel training). One GPU: the plain model under autocast
   (the baseline a user has); N GPUs: FSDP2 (`slatte.training.fsdp.shard_model`, bf16 params,
   fp32 gradient reduction) with a sharded EMA. Figure: clips/s, and N-GPU clips/s over 1-GPU.
2. Attention: SLA (fused kernel) over B=1, H heads, N tokens, D=128, bf16, forward (or with
   --backward forward + backward). One GPU: the whole sequence; N GPUs: N/P tokens each, split
   by each of --decompositions: `ulysses` (all-to-alls around the same kernel,
   `slatte.ops.sequence_parallel.ulysses_attention`), `ring` (`slatte.parallel.ring_sla` /
   `ring_attention`: K/V around the ring, plain PyTorch per GPU) and `hybrid` (Ulysses inside
   groups of GPUs / --ring-degree, ring across them). Figure: ms per call (slowest rank), and
   1-GPU time over N-GPU time, per decomposition.

NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is set before the process group exists.
Prints one JSON object and a table (`--profile`: and each attention call's slowest kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"  # before torch.distributed initialises NCCL

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from common import kernel_ms  # noqa: E402


# --------------------------------------------------------------------------- timing
def _time_ms(fn, *, warmup: int, repeats: int) -> float:
    """Median ms of `fn()` over `repeats` calls, every process starting together; the slowest
    process's median counts (a step is only done when all are)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    median = torch.tensor(sorted(times)[len(times) // 2], device="cuda")
    if dist.is_initialized():
        dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return float(median)


# --------------------------------------------------------------------------- worker parts
def train_throughput(args: argparse.Namespace, world: int) -> dict:
    from slatte.diffusion import create_diffusion
    from slatte.models import VideoDiT, model_config
    from slatte.training.ema import make_ema, update_ema
    from slatte.training.fsdp import shard_model

    torch.manual_seed(0)
    model = VideoDiT(  # UCF-101's class-conditional setting
        model_config(args.model, num_frames=16, input_size=32, in_channels=4, num_classes=101)
    )
    model = model.cuda()
    model.enable_gradient_checkpointing(args.grad_checkpointing)
    ema = make_ema(model)
    if world > 1:
        shard_model(model, precision="bf16")
        shard_model(ema)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    diffusion = create_diffusion(learn_sigma=model.config.learn_sigma)
    gen = torch.Generator(device="cuda").manual_seed(dist.get_rank() if world > 1 else 0)
    x0 = torch.randn(args.batch, 16, 4, 32, 32, device="cuda", generator=gen)
    y = torch.randint(0, model.config.num_classes, (args.batch,), device="cuda", generator=gen)

    def step() -> None:
        t = torch.randint(0, 1000, (args.batch,), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion.training_losses(lambda x, tt: model(x, tt, y), x0, t)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, 0.9999)

    ms = _time_ms(step, warmup=3, repeats=args.train_repeats)
    return {
        "model": args.model,
        "mode": "fsdp2" if world > 1 else "single",
        "batch_per_gpu": args.batch,
        "step_ms": round(ms, 2),
        "clips_per_s": round(args.batch * world / (ms * 1e-3), 2),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def _attention_call(decomposition, backend, groups, sla, q, k, v, proj):
    """The attention call of one row: one GPU runs the op on the whole sequence; N GPUs split it
    by `decomposition` (`groups`: the ring and Ulysses groups of this process)."""
    from slatte.ops.attention import attention
    from slatte.ops.sequence_parallel import ulysses_attention
    from slatte.parallel import hybrid_attention, hybrid_sla, ring_attention, ring_sla

    def attend(q_, k_, v_):
        return attention(q_, k_, v_, backend=backend, sla=sla, proj_weight=proj)

    if groups is None:
        return lambda: attend(q, k, v)
    ring_group, ulysses_group = groups[decomposition]
    if decomposition == "ulysses":
        return lambda: ulysses_attention(q, k, v, attend, ulysses_group)
    dense = backend == "sdpa"  # the ring paths run plain PyTorch per process for any SLA backend
    if decomposition == "ring":
        if dense:
            return lambda: ring_attention(q, k, v, ring_group)
        return lambda: ring_sla(q, k, v, proj, None, sla, ring_group)
    if dense:
        return lambda: hybrid_attention(q, k, v, ring_group, ulysses_group)
    return lambda: hybrid_sla(q, k, v, proj, None, sla, ring_group, ulysses_group)


def _groups(args: argparse.Namespace, world: int) -> dict | None:
    """(ring group, Ulysses group) per decomposition; None on one GPU. Hybrid: --ring-degree
    ring positions of world / ring-degree GPUs each (consecutive ranks share heads)."""
    if world == 1:
        return None
    from slatte.parallel import hybrid_groups

    groups = {"ulysses": (None, dist.group.WORLD), "ring": (dist.group.WORLD, None)}
    if "hybrid" in args.decompositions and world % args.ring_degree == 0:
        groups["hybrid"] = hybrid_groups(args.ring_degree)
    return groups


def attention_times(args: argparse.Namespace, world: int) -> list[dict]:
    from slatte.ops.sla.config import SLAConfig

    sla = SLAConfig(critical=args.critical, block_q=args.block_q, block_k=args.block_k)
    groups = _groups(args, world)
    rows = []
    for n in args.seq_lens:
        for decomposition in args.decompositions:
            for backend in args.backends:
                row = {
                    "decomposition": decomposition,
                    "backend": backend,
                    "seq_len": n,
                    "heads": args.heads,
                    "gpus": world,
                }
                if groups is not None and decomposition not in groups:
                    row["error"] = f"hybrid needs the GPU count divisible by {args.ring_degree}"
                    rows.append(row)
                    continue
                gen = torch.Generator(device="cuda").manual_seed(0)
                shape = (1, args.heads, n // world, args.head_dim)
                q, k, v = (
                    torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
                    for _ in range(3)
                )
                proj = torch.zeros(args.head_dim, args.head_dim, device="cuda")
                if args.backward:
                    for t in (q, k, v, proj):
                        t.requires_grad_()
                forward = _attention_call(decomposition, backend, groups, sla, q, k, v, proj)
                grad = torch.ones_like(q) if args.backward else None

                def call(forward=forward, grad=grad):
                    if grad is not None:
                        forward().backward(grad)
                    else:
                        with torch.no_grad():
                            forward()

                key = "fwd_bwd_ms" if args.backward else "forward_ms"
                try:
                    row[key] = round(_time_ms(call, warmup=2, repeats=args.repeats), 3)
                    if args.profile:  # this process's kernels (rank 0's are reported)
                        kernels = kernel_ms(call, repeats=3)
                        row["kernels_ms"] = {n[:80]: round(ms, 3) for n, ms in kernels.items()}
                except Exception as err:  # report, keep measuring the other shapes
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                rows.append(row)
                del q, k, v, proj, forward, grad
                torch.cuda.empty_cache()
    return rows


def worker(args: argparse.Namespace) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    result: dict = {"gpus": world}
    if not args.skip_train:
        result["train"] = train_throughput(args, world)
        torch.cuda.empty_cache()
    if not args.skip_attention:
        result["attention"] = attention_times(args, world)
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- launcher
def launch(args: argparse.Namespace, argv: list[str]) -> None:
    import triton

    counts = [1] + [g for g in args.gpus if g > 1]
    if max(counts) > torch.cuda.device_count():
        raise SystemExit(f"asked for {max(counts)} GPUs, {torch.cuda.device_count()} visible")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in counts:
            out = Path(tmp) / f"{gpus}.json"
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={gpus}", __file__, *argv, "--worker", "--result", str(out),
            ]  # fmt: skip
            subprocess.run(cmd, check=True, env={**os.environ, "NCCL_NVLS_ENABLE": "0"})
            runs[gpus] = json.loads(out.read_text())
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "runs": runs,
        "speedup": {},
    }
    base = runs[1]
    for gpus in counts[1:]:
        entry = {}
        if "train" in base:
            entry["train_clips_per_s"] = round(
                runs[gpus]["train"]["clips_per_s"] / base["train"]["clips_per_s"], 3
            )
        for one, many in zip(
            base.get("attention", []), runs[gpus].get("attention", []), strict=True
        ):
            ms_key = "fwd_bwd_ms" if "fwd_bwd_ms" in one else "forward_ms"
            if ms_key in one and ms_key in many:
                entry[_row_key(one)] = round(one[ms_key] / many[ms_key], 3)
        report["speedup"][str(gpus)] = entry
    print(json.dumps(report))
    print_table(report, counts)


def _row_key(row: dict) -> str:
    return f"attention_{row['decomposition']}_{row['backend']}_{row['seq_len']}"


def print_table(report: dict, counts: list[int]) -> None:
    runs = report["runs"]
    print(f"\n{report['device']}, torch {report['torch']}")
    if "train" in runs[1]:
        print("| GPUs | mode | step ms | clips/s | peak GB | speed-up |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for gpus in counts:
            t = runs[gpus]["train"]
            ratio = report["speedup"].get(str(gpus), {}).get("train_clips_per_s", 1.0)
            print(
                f"| {gpus} | {t['mode']} | {t['step_ms']} | {t['clips_per_s']} | "
                f"{t['peak_mem_gb']} | {ratio}× |"
            )
    if "attention" in runs[1]:
        print("\n| split | backend | tokens | GPUs | ms (fwd or fwd+bwd) | speed-up |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for gpus in counts:
            for row in runs[gpus]["attention"]:
                ratio = report["speedup"].get(str(gpus), {}).get(_row_key(row), 1.0)
                ms = row.get("fwd_bwd_ms", row.get("forward_ms", row.get("error", "?")))
                print(
                    f"| {row['decomposition']} | {row['backend']} | {row['seq_len']} | {gpus} | "
                    f"{ms} | {ratio}× |"
                )
    for gpus in counts:  # --profile: the slowest kernels of each call
        for row in runs[gpus].get("attention", []):
            if "kernels_ms" in row:
                print(
                    f"\n{row['decomposition']} {row['backend']}, {row['seq_len']} tokens, "
                    f"{gpus} GPUs (rank 0):"
                )
                for name, ms in list(row["kernels_ms"].items())[:10]:
                    print(f"  {ms:8.3f} ms  {name}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="2", help="comma list of GPU counts to compare with 1")
    p.add_argument("--model", default="Latte-XL/2")
    p.add_argument("--batch", type=int, default=4, help="clips per GPU")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--train-repeats", type=int, default=10)
    p.add_argument("--seq-lens", default="65536,131072")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--backends", default="sla", help="comma list: sla, sdpa, sla_reference")
    p.add_argument(
        "--decompositions",
        default="ulysses,ring,hybrid",
        help="comma list of how N GPUs split attention: ulysses, ring, hybrid (Ulysses x ring)",
    )
    p.add_argument(
        "--ring-degree", type=int, default=2, help="hybrid: ring positions (GPUs / this per ring)"
    )
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--critical", type=float, default=0.05)
    p.add_argument("--block-q", type=int, default=64)
    p.add_argument("--block-k", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--profile", action="store_true", help="GPU time per kernel of each call")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.gpus = [int(g) for g in str(args.gpus).split(",") if g]
    args.seq_lens = [int(n) for n in args.seq_lens.split(",") if n]
    args.backends = [b for b in args.backends.split(",") if b]
    args.decompositions = [d for d in args.decompositions.split(",") if d]
    unknown = set(args.decompositions) - {"ulysses", "ring", "hybrid"}
    if unknown:
        raise SystemExit(
            f"--decompositions: unknown {sorted(unknown)}; allowed: ulysses, ring, hybrid"
        )
    for gpus in args.gpus:
        for n in args.seq_lens:
            if n % gpus or args.heads % gpus:
                raise SystemExit(f"--seq-lens {n} and --heads {args.heads} must divide by {gpus}")
    return args


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.worker:
        worker(args)
    else:
        launch(args, argv)


if __name__ == "__main__":
    main()
