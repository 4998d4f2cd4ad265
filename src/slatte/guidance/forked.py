"""The model evaluations guidance needs: conditional, unconditional and perturbed predictions.

Forked evaluation (the fast path). The unconditional and conditional rows run as one batch
through every block. A perturbed branch sees the same input and condition as the conditional
rows, so up to its first perturbed block it is identical to them: when the shared batch reaches
that block, the branch takes a copy of the conditional rows' hidden state and per-sample tensors
(`BlockContext.map_batch`) and runs the remaining blocks with its perturbations. Each block of the
shared prefix thus runs once. Branches fork in order of their first block, each completing
before the shared batch goes on, so at most one branch's activations are alive at a time.

Naive evaluation (the baseline): one full forward per branch, as public implementations do.
Both return the same predictions within float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slatte.models import cat_contexts

from .condition import Condition
from .strategies import Strategy


@dataclass(frozen=True)
class PerturbedBranch:
    """A perturbed branch: `perturbations` {block index: strategy} applied to the conditional
    rows `rows` (indices into the batch, None = all)."""

    perturbations: dict[int, Strategy]
    rows: torch.Tensor | None = None

    @property
    def first_block(self) -> int:
        return min(self.perturbations)


@dataclass(frozen=True)
class Predictions:
    """Raw model outputs: `cond` for every row, `uncond` for the unconditional rows (None when
    CFG is not computed), `perturbed[i]` for the rows of branch i."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    perturbed: list[torch.Tensor]


def forked_predictions(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    uncond: Condition | None,
    uncond_rows: torch.Tensor | None,
    branches: Sequence[PerturbedBranch],
) -> Predictions:
    """The predictions with the shared prefix computed once (module docstring).

    `x` (B, F, C, H, W), `t` (B,); `cond` / `uncond` for all B rows; `uncond_rows` the rows that
    get an unconditional prediction (None = all; ignored when `uncond` is None).
    """
    h, ctx = model.embed(x, t, **cond.kwargs())
    offset = 0
    if uncond is not None:
        x_u, t_u = (x, t) if uncond_rows is None else (x[uncond_rows], t[uncond_rows])
        h_u, ctx_u = model.embed(x_u, t_u, **uncond.rows(uncond_rows).kwargs())
        offset = h_u.shape[0]
        # Unconditional rows first, then the conditional ones: (B_u + B, F, S, D).
        h, ctx = torch.cat([h_u, h]), cat_contexts([ctx_u, ctx])

    perturbed: list[torch.Tensor | None] = [None] * len(branches)
    done = 0  # blocks the shared batch has been through
    for i in sorted(range(len(branches)), key=lambda i: branches[i].first_block):
        branch = branches[i]
        if branch.first_block > done:
            h = model.run_blocks(h, ctx, done, branch.first_block)
            done = branch.first_block
        rows = _cond_rows(offset, branch.rows, h.device)
        h_p, ctx_p = h[rows], ctx.map_batch(lambda tensor, rows=rows: tensor[rows])
        h_p = model.run_blocks(h_p, ctx_p, done, None, perturbations=branch.perturbations)
        perturbed[i] = model.final(h_p, ctx_p)
    h = model.run_blocks(h, ctx, done, None)
    out = model.final(h, ctx)
    return Predictions(
        cond=out[offset:], uncond=out[:offset] if uncond is not None else None, perturbed=perturbed
    )


def naive_predictions(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    uncond: Condition | None,
    uncond_rows: torch.Tensor | None,
    branches: Sequence[PerturbedBranch],
) -> Predictions:
    """The same predictions as `forked_predictions`, one full forward per branch."""
    out_c = model(x, t, **cond.kwargs())
    out_u = None
    if uncond is not None:
        x_u, t_u = (x, t) if uncond_rows is None else (x[uncond_rows], t[uncond_rows])
        out_u = model(x_u, t_u, **uncond.rows(uncond_rows).kwargs())
    perturbed = []
    for branch in branches:
        x_p, t_p = (x, t) if branch.rows is None else (x[branch.rows], t[branch.rows])
        kwargs = cond.rows(branch.rows).kwargs()
        perturbed.append(model(x_p, t_p, **kwargs, perturbations=branch.perturbations))
    return Predictions(cond=out_c, uncond=out_u, perturbed=perturbed)


def _cond_rows(
    offset: int, rows: torch.Tensor | None, device: torch.device
) -> slice | torch.Tensor:
    """Where a branch's rows sit in the shared batch (conditional rows start at `offset`)."""
    if rows is None:
        return slice(offset, None)
    return rows.to(device) + offset
