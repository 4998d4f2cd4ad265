"""The guidance formula on predictions (`shared/specs/STG.md`, "Combination").

    e = e_u + w_cfg (e_c - e_u) + sum_p w_p (e_c - e_p),   then optionally rescaled.

Works on any prediction (noise, velocity, x0) with the batch first; a branch may cover only some
rows of the batch (a row outside a term's step window has no prediction for that term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class BranchPrediction(NamedTuple):
    """One extra branch's prediction: `pred` for the rows `rows` (indices into the batch,
    None = every row), entering the formula with weight `scale` (a number, or one per row of
    `pred` as a tensor: the adaptive STG scale)."""

    scale: float | torch.Tensor
    pred: torch.Tensor
    rows: torch.Tensor | None = None


def combine(
    cond: torch.Tensor,
    *,
    uncond: BranchPrediction | None = None,
    perturbed: Sequence[BranchPrediction] = (),
    rescale: float = 0.0,
) -> torch.Tensor:
    """Guided prediction from the conditional one (B, ...) and the other branches.

    `uncond`: CFG, `e_u + scale (e_c - e_u)` on its rows (others keep `e_c`). `perturbed`: each
    adds `scale (e_c - e_p)` on its rows. `rescale = r` in [0, 1] (0 = off): per sample,
    `f = std(e_c) / std(e)` over all non-batch dims, `e <- (r f + 1 - r) e`.
    Half-precision inputs are combined in fp32 and returned in their own dtype.
    """
    dtype = cond.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    cond = cond.to(compute)
    guided = cond.clone()
    if uncond is not None:
        rows = _rows(uncond.rows)
        e_u = uncond.pred.to(compute)
        guided[rows] = e_u + uncond.scale * (cond[rows] - e_u)
    for branch in perturbed:
        rows = _rows(branch.rows)
        guided[rows] += _weight(branch.scale, cond.ndim) * (cond[rows] - branch.pred.to(compute))
    if rescale > 0:
        guided = guided * _rescale_factor(cond, guided, rescale)
    return guided.to(dtype)


def _weight(scale: float | torch.Tensor, ndim: int) -> float | torch.Tensor:
    """A number as is; per-row weights (R,) as (R, 1, ..., 1) against (R, ...) predictions."""
    if isinstance(scale, torch.Tensor):
        return scale.reshape(-1, *(1,) * (ndim - 1))
    return scale


def _rows(rows: torch.Tensor | None) -> slice | torch.Tensor:
    return slice(None) if rows is None else rows


def _rescale_factor(cond: torch.Tensor, guided: torch.Tensor, rescale: float) -> torch.Tensor:
    """(B, 1, ..., 1): `r std(e_c) / std(e) + 1 - r` per sample."""
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    # A constant guided sample has no spread to restore; the clamp keeps the factor finite.
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
    return rescale * (std_cond / std_guided) + (1.0 - rescale)
