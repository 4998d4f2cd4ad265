"""The cheap, label-free signal that ranks STG (block, strategy) pairs (`slatte.stg_search`
verifies the best few by sampling and writes the winner as a model's `sampling.json`).

The signal (`perturbation_signals`). On a few noised inputs at several timesteps, every pair's
perturbed prediction `e_p` is compared with the conditional `e_c` and unconditional `e_u` ones
(all pairs in one forked evaluation: each branch forks at its block):

    size      = ||e_c - e_p|| / ||e_c - e_u||      how far the perturbation moves the prediction,
                                                   in units of the CFG direction
    alignment = cos(e_c - e_p, e_c - e_u)          whether it pushes along CFG's direction

Pairs rank by `score = -alignment`, the least aligned with CFG first (across or against it). The
part of `e_c - e_p` along `e_c - e_u` only adds more CFG, which over-saturates and draws the
wrong class as the scale grows; the part across it is what STG adds beyond CFG. On the shipped `latte-digits-m` this
ranks the 12 (block, strategy) pairs of the 49-setting STG study with Spearman 0.66 against
their mean sampled frame accuracy and 0.41 against smoothness (0.64 and 0.25 on another set of
input clips), and puts the study's best pair first both times (`docs/RESULTS.md`, "STG that
chooses itself"); `size` is reported, not ranked by (Spearman +0.38 with smoothness but -0.58
with accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .condition import Condition
from .forked import PerturbedBranch, forked_predictions
from .strategies import STRATEGIES, STRATEGY_NAMES, get_strategy

# Where the inputs sit in the schedule (progress, 0 = noisiest), spread over the sampling run.
DEFAULT_PROGRESS = (0.1, 0.4, 0.7)


@dataclass(frozen=True)
class Candidate:
    """One (block, strategy) pair with its signal: `size` and `alignment` (means over the
    inputs and timesteps, module docstring) and the `score` pairs rank by."""

    block: int
    strategy: str
    size: float
    alignment: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perturbation_signals(
    model: nn.Module,
    x0: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    blocks: Sequence[int] | None = None,
    strategies: Sequence[str] = STRATEGY_NAMES,
    progress: Sequence[float] = DEFAULT_PROGRESS,
    num_train_timesteps: int = 1000,
    seed: int = 0,
) -> list[Candidate]:
    """Every (block, strategy) pair of `model` (all blocks by default) with its signal, best
    first.

    `x0` (B, F, C, H, W): clean inputs on the model's scale (real clips, or the model's own
    samples for a model without data); each is noised to every `progress` point of the
    schedule with a fixed `seed`. `y` (B,): class labels of the conditional branch (None: the
    model's null class is the unconditional one and there is no class to guide towards, so give
    labels for a class-conditional model; any labels will do, the signal is label-free).
    """
    num_blocks = len(model.blocks)
    blocks = list(range(num_blocks)) if blocks is None else list(blocks)
    for block in blocks:
        if not 0 <= block < num_blocks:
            raise ValueError(f"blocks must lie in 0..{num_blocks - 1}, got {block}")
    for name in strategies:
        get_strategy(name)
    for p in progress:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"progress points must lie in [0, 1], got {p}")
    if y is None:
        raise ValueError("perturbation_signals needs labels y (B,) to guide towards; any will do")
    x, t = _noised(x0, progress, num_train_timesteps, seed)
    y = y.repeat(len(progress))
    pairs = [(block, name) for block in blocks for name in strategies]
    branches = [PerturbedBranch({block: STRATEGIES[name]}) for block, name in pairs]
    preds = forked_predictions(model, x, t, Condition(y=y), Condition(y=None), None, branches)
    channels = x.shape[2]  # a learned variance's extra channels are not guided
    e_c, e_u = preds.cond[:, :, :channels], preds.uncond[:, :, :channels]
    return ranked(
        {
            pair: row_signals(e_c, e_u, e_p[:, :, :channels])
            for pair, e_p in zip(pairs, preds.perturbed, strict=True)
        }
    )


def row_signals(
    e_c: torch.Tensor, e_u: torch.Tensor, e_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(size, alignment), each (B,) in fp64, of one pair's perturbed predictions `e_p` against
    the conditional `e_c` and unconditional `e_u` ones, all (B, ...) (module docstring)."""
    e_c = e_c.flatten(1).double()
    cfg_dir = e_c - e_u.flatten(1).double()
    diff = e_c - e_p.flatten(1).double()
    size = diff.norm(dim=1) / cfg_dir.norm(dim=1).clamp_min(1e-12)
    return size, torch.nn.functional.cosine_similarity(diff, cfg_dir, dim=1)


def ranked(signals: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]) -> list[Candidate]:
    """The candidates of `{(block, strategy): row_signals(...)}` (rows of every input and
    timestep), their means, best first."""
    candidates = []
    for (block, name), (size, alignment) in signals.items():
        mean_alignment = alignment.mean().item()
        candidates.append(
            Candidate(block, name, size.mean().item(), mean_alignment, -mean_alignment)
        )
    return sorted(candidates, key=lambda c: -c.score)


def _noised(
    x0: torch.Tensor, progress: Sequence[float], num_train_timesteps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 noised to each progress point of the DDPM schedule: (P·B, ...) inputs, (P·B,) t."""
    from slatte.diffusion import create_diffusion

    diffusion = create_diffusion(None, num_timesteps=num_train_timesteps)
    gen = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for p in progress:
        step = round((1.0 - p) * (num_train_timesteps - 1))
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        xs.append(diffusion.q_sample(x0, t.to(x0.device), noise))
        ts.append(t)
    return torch.cat(xs), torch.cat(ts).to(x0.device)
