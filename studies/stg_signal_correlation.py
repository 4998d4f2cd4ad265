"""How well the STG search's label-free signal ranks the (block, strategy) pairs of the
49-setting STG study: Spearman correlation of each signal against each pair's sampled frame
accuracy and motion smoothness (means over its four scale/rescale settings).

    python studies/stg_signal_correlation.py docs/results/stg_search_cpu.json \
        docs/results/stg_study_fvd.jsonl --figure docs/stg_search_signal.png
"""

from __future__ import annotations

import argparse
import json
import math

import torch


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected among these floats)."""
    ranks = [torch.tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("search", help="the JSON written by studies/stg_search_study.py")
    p.add_argument("study", help="the STG study's JSON lines")
    p.add_argument("--figure", default=None, help="PNG: each metric against the signal")
    args = p.parse_args()
    with open(args.search) as f:
        candidates = json.load(f)["search"]["candidates"]
    signal = {(c["strategy"], c["block"]): c for c in candidates}
    settings: dict[tuple[str, int], list[dict]] = {}
    with open(args.study) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        if row["strategy"] is not None:
            settings.setdefault((row["strategy"], row["block"]), []).append(row)
    pairs = sorted(settings)
    mean = lambda key: [sum(r[key] for r in settings[p]) / len(settings[p]) for p in pairs]
    accuracy, smoothness = mean("frame_accuracy"), mean("motion_smoothness")
    features = {
        "score (-alignment)": [signal[p]["score"] for p in pairs],
        "log size": [math.log(signal[p]["size"]) for p in pairs],
    }
    result = {
        name: {"accuracy": spearman(f, accuracy), "smoothness": spearman(f, smoothness)}
        for name, f in features.items()
    }
    print(json.dumps(result))
    print("| strategy | block | alignment | size | signal rank | frame acc. % | smoothness |")
    print("|---|---|---|---|---|---|---|")
    if args.figure:
        plot(pairs, features["score (-alignment)"], accuracy, smoothness, args.figure)
    order = [(c["strategy"], c["block"]) for c in candidates]
    for pair, acc, smooth in sorted(
        zip(pairs, accuracy, smoothness, strict=True), key=lambda x: order.index(x[0])
    ):
        c = signal[pair]
        print(
            f"| {pair[0]} | {pair[1]} | {c['alignment']:+.3f} | {c['size']:.1f} | "
            f"{order.index(pair) + 1} of {len(order)} | {100 * acc:.1f} | {smooth:.3f} |"
        )


def plot(pairs, score, accuracy, smoothness, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, label in zip(
        axes, (accuracy, smoothness), ("frame accuracy", "motion smoothness"), strict=True
    ):
        ax.scatter(score, values)
        for (strategy, block), x, y in zip(pairs, score, values, strict=True):
            ax.annotate(f"{strategy} {block}", (x, y), fontsize=7)
        ax.set_xlabel("signal: -cos(e_c - e_p, e_c - e_u)")
        ax.set_ylabel(f"{label} (mean of 4 study settings)")
    fig.suptitle(f"STG search signal vs the 49-setting study ({len(pairs)} pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
