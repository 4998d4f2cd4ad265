"""Cheap SLA fine-tuning (issue 26): from the dense full-attention digits model, switch to SLA at
95% sparsity and fine-tune for the same steps and seed with full fine-tuning, LoRA adapters of
each rank in `--ranks` plus the SLA projections, or the SLA projections alone; score every
checkpoint as `sla_study.py` does and record what each costs.

    python studies/lora_study.py DENSE_MODEL_DIR --out runs/lora_study --steps 2000 \
        --ranks 4,16 --train-args "--precision bf16 --batch-size 64 --lr 1e-4 --workers 8"

Writes `OUT/results.jsonl`: one line per checkpoint with the metrics of `common.score`,
`attention_error` and the run's costs (trainable parameters, peak GPU memory in GiB — "n/a
(cpu)" off CUDA —, seconds per step from `metrics.jsonl`), and `OUT/lora_study.png`: video
accuracy over the steps of each variant beside their peak memory. LoRA checkpoints are scored
with their adapter merged (`checkpoints/step_N/adapter`). The dense model is step 0. Cut short
(a time limit), the same command resumes it (`sla_study.run_study`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sla_study import add_study_arguments, run_study

from slatte.lora import ADAPTER_DIR, load_adapter, merge_lora
from slatte.models import VideoDiT, load_model

SLA_95 = ["--attention", "sla", "--sla-critical", "0.05"]  # sla_study's sla@0.95


def variants(ranks: list[int]) -> dict[str, list[str]]:
    out = {"full": SLA_95, "sla_only": [*SLA_95, "--trainable", "sla"]}
    for rank in ranks:
        out[f"lora{rank}+sla"] = [*SLA_95, "--lora-rank", str(rank), "--trainable", "lora+sla"]
    return out


def costs(run_dir: Path, result_file: Path) -> dict[str, Any]:
    """What a run cost: trainable parameters and peak memory (the `slatte train` result it
    printed) and the median seconds per step over its logged windows."""
    result = json.loads(result_file.read_text())
    batch = json.loads((run_dir / "train_config.json").read_text())["batch_size"]
    rates = [json.loads(line)["clips_per_s"] for line in (run_dir / "metrics.jsonl").open()]
    return {
        "trainable_parameters": result["trainable_parameters"],
        "total_parameters": result["total_parameters"],
        "peak_memory_gib": result["peak_memory_gib"],
        "step_time_s": batch / statistics.median(rates),
    }


def load_checkpoint(model_dir: Path, device: str) -> VideoDiT:
    """A checkpoint's model, its LoRA adapter (if the run had one) merged into it."""
    model = load_model(model_dir)
    adapter = model_dir.parent / ADAPTER_DIR
    if adapter.is_dir():
        model = merge_lora(load_adapter(model, adapter))
    return model.to(device)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, memory) = plt.subplots(1, 2, figsize=(10, 4))
    dense = next(r for r in rows if r["variant"] == "dense")
    names = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "dense"]
    for name in names:
        runs = [dense] + sorted((r for r in rows if r["variant"] == name), key=lambda r: r["step"])
        curves.plot(
            [r["step"] for r in runs], [r["video_accuracy"] for r in runs], "o-", label=name
        )
    curves.set(xlabel="fine-tuning step", ylabel="video accuracy", title="SLA 95%: recovery")
    curves.legend()
    last = {r["variant"]: r for r in rows if r["variant"] != "dense"}
    gib = [last[n]["peak_memory_gib"] for n in names]
    if all(isinstance(g, float) for g in gib):
        memory.bar(names, gib)
        memory.set(ylabel="peak GPU memory (GiB)", title="cost at the same batch")
    else:
        memory.text(0.5, 0.5, "peak memory n/a (not on CUDA)", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(p)
    p.add_argument("--ranks", default="4,16", help="LoRA ranks, one run each")
    args = p.parse_args()
    rows = run_study(
        args,
        variants([int(r) for r in args.ranks.split(",") if r]),
        load=load_checkpoint,
        run_figures=lambda name, run_dir: costs(run_dir, Path(args.out) / f"{name}.out"),
    )
    plot(rows, Path(args.out) / "lora_study.png")


if __name__ == "__main__":
    main()
