"""Figures (and Markdown tables) of docs/RESULTS.md from the measured JSON lines.

    python studies/plot_results.py                      # docs/results/*.jsonl -> docs/*.png
    python studies/plot_results.py --tables             # also print the tables as Markdown

Reads the files the studies wrote (training logs, quality_vs_steps, stg_study, the SLA studies
sla_study_300 and sla_study_1200 on the step-3,000 `full` model and sla_study_5000_1200 on the
step-5,000 one, sla_shipped_finetune) and writes one PNG per figure. Nothing is computed here beyond differences and
rounding, so every number in the figures and tables is one that a study measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

Row = dict[str, Any]

RUNS = {  # run name -> legend label
    "latte_m": "latte_m (alternating, depth 6, 4.1M params)",
    "full": "full (spatio-temporal, depth 4, 1.3M params)",
}
RUN_COLOURS = {"latte_m": "tab:blue", "full": "tab:orange"}
STRATEGIES = ("transformer_block", "attention_block", "attention_skip", "attention_values")
# latte_m alternates spatial (even) and temporal (odd) blocks; the STG study perturbs 0, 3, 5.
BLOCK_KIND = {0: "spatial", 3: "temporal", 5: "temporal"}
SLA_COLOURS = {
    "dense": "black",
    "sla": "tab:blue",
    "sparse": "tab:orange",
    "linear": "tab:green",
    "no_proj": "tab:red",
    "sla@0.9": "tab:purple",
    "sla@0.97": "tab:brown",
}
# What each SLA study variant is (studies/sla_study.py); sla@S keeps 1 - S of the key blocks.
SLA_SPARSITY = {"sla@0.9": 0.90, "sla": 0.95, "sla@0.97": 0.97}
# The ablations placed on the sparsity axis: variant, marker, sparsity, what it is.
ABLATIONS = (
    ("sparse", "s", 0.95, "5% critical, rest skipped"),
    ("no_proj", "^", 0.95, "SLA, identity projection"),
    ("linear", "x", 1.0, "linear attention only"),
)
DPI = 100


def load_jsonl(path: Path) -> list[Row]:
    if not path.is_file():
        raise SystemExit(f"plot_results: {path} is missing (see docs/RESULTS.md for its command)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_training_loss(logs: dict[str, list[Row]], out: Path) -> Path:
    """Training loss and its unweighted noise MSE against step, both runs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for run, rows in logs.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["loss"] for r in rows], color=RUN_COLOURS[run], label=RUNS[run])
        axes[1].plot(steps, [r["mse"] for r in rows], color=RUN_COLOURS[run], label=RUNS[run])
    axes[0].set_title("Training loss (Min-SNR-5 weighted MSE + VB)")
    axes[1].set_title("Noise-prediction MSE (unweighted)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("training step (batch: 128 clips + 128 frames)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("loss of the logged step's batch")
    axes[1].set_ylabel("MSE of the logged step's batch")
    axes[0].legend(fontsize=8)
    fig.suptitle("Training from scratch on moving digits (16 × 32 × 32), one H100", fontsize=11)
    fig.tight_layout()
    return save(fig, out)


def plot_quality_vs_steps(rows: list[Row], out: Path) -> Path:
    """Frame accuracy, FD and motion smoothness of each scored checkpoint (EMA, 100 videos)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for run in RUNS:
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
        steps = [r["step"] for r in mine]
        style = {"color": RUN_COLOURS[run], "marker": "o", "label": RUNS[run]}
        axes[0].plot(
            steps,
            [100 * r["frame_accuracy"] for r in mine],
            color=RUN_COLOURS[run],
            marker="o",
            label=f"{run}: frames",
        )
        axes[0].plot(
            steps,
            [100 * r["video_accuracy_strict"] for r in mine],
            color=RUN_COLOURS[run],
            marker="s",
            linestyle="--",
            label=f"{run}: videos, every frame right",
        )
        axes[1].plot(steps, [r["fd"] for r in mine], **style)
        axes[2].plot(steps, [r["motion_smoothness"] for r in mine], **style)
    axes[0].axhline(10, color="grey", linestyle=":", label="chance (10%)")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("Digit accuracy")
    axes[0].set_ylim(0, 102)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].set_ylabel("FD (lower is better)")
    axes[1].set_title("Fréchet distance to 100 real clips")
    axes[1].set_ylim(bottom=0)
    axes[2].axhline(0.98, color="grey", linestyle=":", label="real clips (≥ 0.98)")
    axes[2].set_ylabel("motion smoothness (1 = straight paths)")
    axes[2].set_title("Motion smoothness")
    axes[2].set_ylim(0.6, 1.0)
    axes[2].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Quality of EMA checkpoints: 100 videos, 50 DDPM steps, CFG 4", fontsize=11)
    fig.tight_layout()
    return save(fig, out)


def _stg_grid(rows: list[Row], key: str) -> tuple[np.ndarray, list[str], list[str]]:
    """A (strategy × block, scale × rescale) table of one metric."""
    blocks = sorted({r["block"] for r in rows if r["strategy"] is not None})
    columns = sorted({(r["stg_scale"], r["rescale"]) for r in rows if r["strategy"] is not None})
    index = {(r["strategy"], r["block"], r["stg_scale"], r["rescale"]): r[key] for r in rows}
    grid = np.array(
        [[index[(s, b, *c)] for c in columns] for s in STRATEGIES for b in blocks], dtype=float
    )
    row_labels = [f"{s} · block {b} ({BLOCK_KIND.get(b, '?')})" for s in STRATEGIES for b in blocks]
    col_labels = [f"STG {scale:g}" + (f"\nrescale {rs:g}" if rs else "") for scale, rs in columns]
    return grid, row_labels, col_labels


def plot_stg(rows: list[Row], out: Path, model: str) -> Path:
    """Each STG setting's metric minus CFG alone's, as annotated heat maps (FVD too where the
    rows have it)."""
    (base,) = [r for r in rows if r["strategy"] is None]
    panels = [
        ("frame_accuracy", "frame accuracy (points)", 100.0, "{:+.1f}", 1),
        ("motion_smoothness", "motion smoothness (×100)", 100.0, "{:+.1f}", 1),
        ("fd", "FD (lower is better; noisy at 50 videos)", 1.0, "{:+.0f}", -1),
    ]
    if "fvd" in base:
        panels.append(("fvd", "FVD (lower is better; 50 vs 50 clips)", 1.0, "{:+.0f}", -1))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 6.6), sharey=True)
    for ax, (key, name, unit, fmt, sign) in zip(axes, panels, strict=True):
        grid, row_labels, col_labels = _stg_grid(rows, key)
        delta = (grid - base[key]) * unit
        limit = np.abs(delta).max()
        # Colour by "better" (green) or "worse" (red), whichever direction the metric improves.
        ax.imshow(sign * delta, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), value in np.ndenumerate(delta):
            dark = abs(value) > 0.6 * limit  # saturated cells: white text stays readable
            colour = "white" if dark else "black"
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        baseline = base[key] * unit
        ax.set_title(f"Δ {name}\nCFG alone: {baseline:.1f}", fontsize=9)
        for edge in np.arange(2.5, len(row_labels) - 1, 3):  # separate the strategies
            ax.axhline(edge, color="black", linewidth=1)
    fig.suptitle(
        f"STG on {model} vs CFG 4 alone: 50 videos, 50 DDPM steps, same seeds",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, out)


def plot_sla_steps(studies: dict[str, list[Row]], out: Path) -> Path:
    """Frame accuracy, FD and attention error against fine-tuning step, one row per study."""
    panels = [
        ("frame_accuracy", "frame accuracy (%)", 100.0),
        ("fd", "FD (lower is better)", 1.0),
        ("attention_error", "attention error (rel. L2 vs dense)", 1.0),
    ]
    fig, axes = plt.subplots(len(studies), 3, figsize=(12, 3.2 * len(studies)), squeeze=False)
    for (title, rows), row_axes in zip(studies.items(), axes, strict=True):
        (start,) = [r for r in rows if r["variant"] == "dense" and r["step"] == 0]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        for variant in variants:
            mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["step"])
            if variant != "dense":  # every variant starts from the dense model
                mine = [start, *mine]
            steps = [r["step"] for r in mine]
            for ax, (key, _, unit) in zip(row_axes, panels, strict=True):
                ax.plot(
                    steps,
                    [unit * r[key] for r in mine],
                    marker="o",
                    color=SLA_COLOURS.get(variant),
                    label=variant,
                )
        for ax, (_, label, _) in zip(row_axes, panels, strict=True):
            ax.set_xlabel("fine-tuning step")
            ax.set_ylabel(label)
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        row_axes[0].set_ylim(0, 100)
        row_axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("SLA fine-tuning of the full-attention model: 50 videos per point", fontsize=11)
    fig.tight_layout()
    return save(fig, out)


def plot_sla_sparsity(rows: list[Row], out: Path) -> Path:
    """Quality against SLA sparsity at the study's last step, with dense and the ablations."""
    last = max(r["step"] for r in rows)
    at_last = {r["variant"]: r for r in rows if r["step"] == last}
    (start,) = [r for r in rows if r["variant"] == "dense" and r["step"] == 0]
    panels = [
        # Frame accuracy is near 100% for every variant here: whole-video correctness separates them.
        ("video_accuracy_strict", "videos with every frame right (%)", 100.0),
        ("fd", "FD (lower is better)", 1.0),
        ("attention_error", "attention error (rel. L2 vs dense)", 1.0),
    ]
    if "fvd" in start:
        panels.append(("fvd", "FVD (lower is better; 50 vs 50 clips)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(14 * len(panels) / 3, 3.8))
    xs = sorted(SLA_SPARSITY.values())
    names = sorted(SLA_SPARSITY, key=SLA_SPARSITY.get)
    for ax, (key, label, unit) in zip(axes, panels, strict=True):
        ax.plot(
            xs,
            [unit * at_last[n][key] for n in names],
            marker="o",
            color="tab:blue",
            label=f"SLA (learned projection), step {last}",
        )
        if "dense" in at_last:  # dense fine-tuned alike (not in every study)
            ax.axhline(unit * at_last["dense"][key], color="black", label=f"dense, step {last}")
        ax.axhline(unit * start[key], color="black", linestyle=":", label="dense, step 0")
        for variant, marker, x, what in ABLATIONS:
            if variant in at_last:
                ax.scatter(
                    [x],
                    [unit * at_last[variant][key]],
                    marker=marker,
                    color=SLA_COLOURS[variant],
                    zorder=3,
                    label=f"{variant} ({what}), step {last}",
                )
        ticks = [*xs, 1.0]
        ax.set_xticks(ticks, [f"{x:.0%}" for x in ticks])
        ax.set_xlabel("sparsity (key blocks not computed exactly)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(0, 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.1))
    fig.suptitle(
        f"SLA sparsity after {last} fine-tuning steps (4,096 tokens, 64 key blocks of 64): "
        "50 videos per point",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, out)


# ---------------------------------------------------------------------------------------------
# Tables (Markdown, for docs/RESULTS.md)
# ---------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


QUALITY_HEADER = ["frame acc. %", "video acc. %", "every frame %", "FD", "smoothness"]


def _quality_cells(r: Row) -> list[str]:
    return [
        _pct(r["frame_accuracy"]),
        _pct(r["video_accuracy"]),
        _pct(r["video_accuracy_strict"]),
        f"{r['fd']:.1f}",
        f"{r['motion_smoothness']:.3f}",
    ]


def tables(results: Path) -> str:
    """The key numbers of every study as Markdown tables."""
    out = []
    quality = load_jsonl(results / "quality_vs_steps.jsonl")
    body = [
        [r["run"], str(r["step"]), *_quality_cells(r)]
        for r in sorted(quality, key=lambda r: (r["run"] != "latte_m", r["step"]))
    ]
    out.append(_table(["run", "step", *QUALITY_HEADER], body))

    stg = load_jsonl(results / "stg_study.jsonl")
    body = []
    for r in stg:
        name = "CFG 4 alone" if r["strategy"] is None else f"{r['strategy']}"
        block = "" if r["block"] is None else f"{r['block']} ({BLOCK_KIND.get(r['block'], '?')})"
        body.append([name, block, f"{r['stg_scale']:g}", f"{r['rescale']:g}", *_quality_cells(r)])
    out.append(_table(["guidance", "block", "STG scale", "rescale", *QUALITY_HEADER], body))

    for name in ("sla_study_300", "sla_study_1200", "sla_study_5000_1200"):
        rows = load_jsonl(results / f"{name}.jsonl")
        body = [
            [r["variant"], str(r["step"]), *_quality_cells(r), f"{r['attention_error']:.3f}"]
            for r in rows
        ]
        out.append(
            f"{name}:\n\n" + _table(["variant", "step", *QUALITY_HEADER, "attn. error"], body)
        )

    shipped = load_jsonl(results / "sla_shipped_finetune.jsonl")
    body = [[str(r["step"]), *_quality_cells(r)] for r in shipped]
    out.append("sla_shipped_finetune:\n\n" + _table(["step", *QUALITY_HEADER], body))

    e2e = json.loads((results / "e2e_wan13b_h100.json").read_text())
    body = [
        [
            r["variant"],
            r["mode"],
            f"{r['forward_ms']:.1f}",
            f"{r['speedup_vs_dense_eager']:.2f}×",
            f"{r['peak_memory_gib']:.2f}",
        ]
        for r in e2e["rows"]
    ]
    out.append(_table(["attention", "mode", "forward ms", "vs dense eager", "peak GiB"], body))
    return "\n\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="JSON lines here")
    p.add_argument("--out", type=Path, default=Path("docs"), help="PNGs go here")
    p.add_argument("--tables", action="store_true", help="print the Markdown tables too")
    args = p.parse_args()
    res, out = args.results, args.out
    out.mkdir(parents=True, exist_ok=True)
    logs = {run: load_jsonl(res / f"{run}_train_log.jsonl") for run in RUNS}
    sla_300 = load_jsonl(res / "sla_study_300.jsonl")
    sla_1200 = load_jsonl(res / "sla_study_1200.jsonl")
    sla_5000 = load_jsonl(res / "sla_study_5000_1200.jsonl")
    written = [
        plot_training_loss(logs, out / "train_loss.png"),
        plot_quality_vs_steps(
            load_jsonl(res / "quality_vs_steps.jsonl"), out / "quality_vs_steps.png"
        ),
        plot_stg(
            load_jsonl(res / "stg_study.jsonl"), out / "stg_vs_cfg.png", "latte_m (step 5,000, EMA)"
        ),
        plot_stg(
            load_jsonl(res / "stg_study_fvd.jsonl"),
            out / "stg_vs_cfg_fvd.png",
            "the shipped latte-digits-m (bf16)",
        ),
        plot_sla_steps(
            {
                "from step 3,000: 300 steps, lr 2e-4 (sla_study_300)": sla_300,
                "from step 3,000: 1,200 steps, lr 5e-4 (sla_study_1200)": sla_1200,
                "from step 5,000: 1,200 steps, lr 5e-4 (sla_study_5000_1200)": sla_5000,
            },
            out / "sla_finetune.png",
        ),
        plot_sla_sparsity(sla_5000, out / "sla_sparsity.png"),
        plot_sla_sparsity(
            load_jsonl(res / "sla_study_5000_1200_fvd.jsonl"), out / "sla_sparsity_fvd.png"
        ),
    ]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if args.tables:
        print(tables(res))


if __name__ == "__main__":
    main()
