"""The STG search's signal (the label-free ranking phase of `slatte stg-search`, issue 25) on a
Wan2.1-1.3B-shaped diffusers `WanTransformer3DModel` with random weights (`bench_e2e.build`):
`diffusers_perturbation_signals` over every (block, strategy) pair at a few noised inputs, timed
against one plain forward of the same model in the same process.

Inputs: random latents noised along the flow-matching path to `--num-timesteps` points spread
over progress 0.1 .. 0.9 of the schedule, x_t = (1 − σ) x0 + σ ε with σ = t / 1000, a random
conditional and a random unconditional text state (the values do not change the cost). Per input
the signal runs one forward each for e_c and e_u and one per pair (e_p, every row perturbed): the
expected cost is inputs × (2 + pairs) forwards; what it measures beyond that is the hooks'
overhead.

    python benchmarks/bench_stg_search.py                          # GPU, full shape, bf16
    python benchmarks/bench_stg_search.py --blocks 0,10,20,29      # fewer pairs
    python benchmarks/bench_stg_search.py --quick                  # tiny shape, CPU (smoke test)

Prints one JSON line (device, versions, shape, the signal's seconds, the forward's ms, the signal
in forwards, the ranking's top pairs) and a table.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_e2e import build
from common import environment, report
from slatte.guidance.strategies import STRATEGY_NAMES
from slatte.integrations.diffusers_stg_search import (
    GuidanceInputs,
    diffusers_perturbation_signals,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def noised_inputs(inputs: dict, num_timesteps: int) -> list[GuidanceInputs]:
    """`num_timesteps` steps' conditional / unconditional inputs around the model's `inputs`."""
    progress = [0.1 + 0.8 * i / max(num_timesteps - 1, 1) for i in range(num_timesteps)]
    x0, text = inputs["hidden_states"], inputs["encoder_hidden_states"]
    g = torch.Generator(x0.device).manual_seed(1)
    uncond_text = torch.randn(text.shape, generator=g, device=text.device, dtype=text.dtype)
    steps = []
    for p in progress:
        sigma = 1.0 - p
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        x_t = (1.0 - sigma) * x0 + sigma * noise
        t = torch.full((x0.shape[0],), 1000.0 * sigma, device=x0.device)
        cond = {**inputs, "hidden_states": x_t, "timestep": t}
        steps.append(
            GuidanceInputs(cond=cond, uncond={**cond, "encoder_hidden_states": uncond_text})
        )
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape on the CPU")
    parser.add_argument("--num-timesteps", type=int, default=3, help="noised inputs (B = 1 each)")
    parser.add_argument("--blocks", default=None, help="comma list of blocks (default: all)")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGY_NAMES), help="comma list of strategies"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed plain forwards")
    args = parser.parse_args()
    if args.num_timesteps < 1:
        raise SystemExit(f"--num-timesteps must be >= 1, got {args.num_timesteps}")

    import diffusers

    if args.quick:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("bench_stg_search.py needs a CUDA GPU for the full shape; use --quick")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, inputs, latents = build("wan2.1-1.3b", args.quick, device, dtype)
    model.eval().requires_grad_(False)
    blocks = None if args.blocks is None else [int(b) for b in args.blocks.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    steps = noised_inputs(inputs, args.num_timesteps)

    with torch.no_grad():
        model(**steps[0].cond)  # warm-up
        forward_s = sorted(
            _seconds(lambda: model(**steps[0].cond), device) for _ in range(args.reps)
        )[args.reps // 2]
    candidates = []

    def signal() -> None:
        candidates[:] = diffusers_perturbation_signals(
            model, steps, blocks=blocks, strategies=strategies
        )

    signal_s = _seconds(signal, device)
    pairs = len(candidates)
    rows = [
        {"what": "plain forward (median)", "seconds": forward_s, "forwards": 1.0},
        {
            "what": f"signal: {pairs} pairs × {len(steps)} inputs",
            "seconds": signal_s,
            "forwards": signal_s / forward_s,
        },
        {
            "what": "signal per pair and input",
            "seconds": signal_s / (pairs * len(steps)),
            "forwards": signal_s / (pairs * len(steps)) / forward_s,
        },
    ]
    record = {
        "benchmark": "stg_search_signal",
        **environment(),
        "diffusers": diffusers.__version__,
        "model": "wan2.1-1.3b" + (" (quick: tiny shape)" if args.quick else ""),
        "dtype": str(dtype).removeprefix("torch."),
        "latents": list(latents),
        "num_blocks": len(model.blocks),
        "inputs": len(steps),
        "pairs": pairs,
        "signal_s": round(signal_s, 4),
        "forward_ms": round(forward_s * 1e3, 3),
        "signal_in_forwards": round(signal_s / forward_s, 2),
        # What the signal should cost: e_c, e_u and one e_p per pair, per input.
        "expected_forwards": len(steps) * (2 + pairs),
        "top": [c.to_dict() for c in candidates[:5]],
    }
    report(record, rows, ["what", "seconds", "forwards"])


if __name__ == "__main__":
    main()
