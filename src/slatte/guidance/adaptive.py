"""Adaptive STG scale: a term's weight follows the content and the step.

Per sample and per step, the weight of an STG term is chosen so that the term keeps a target ratio
of its norm to the CFG term's norm:

    w_p = min(scale, ratio * schedule(progress) * ||w_cfg (e_c - e_u)|| / ||e_c - e_p||)

with norms over all non-batch dims of one sample. Where the perturbed branch barely moves the
prediction (a block that matters little at this step, for this sample) the weight grows, up to the
term's `scale`; where it moves it far (the steps where a fixed scale over-saturates) the weight
shrinks. `schedule` shapes the ratio over the sampling schedule (`progress` 0 at the noisiest
step, 1 at the end; `slatte.guidance.config`); the term's step window still decides where the
branch is computed at all.
"""

from __future__ import annotations

import torch

from .options import SCHEDULES


def adaptive_weights(
    cfg_term: torch.Tensor,
    stg_diff: torch.Tensor,
    *,
    ratio: float,
    cap: float,
    progress: torch.Tensor,
    schedule: str = "constant",
) -> torch.Tensor:
    """(B,) STG weights from the CFG term `w_cfg (e_c - e_u)` and `e_c - e_p`, both (B, ...),
    for rows at `progress` (B,) (module docstring). Computed in fp32 or better."""
    dtype = torch.promote_types(cfg_term.dtype, torch.float32)
    norm_cfg = cfg_term.to(dtype).flatten(1).norm(dim=1)
    # A branch identical to the conditional one has no direction to push along: any weight
    # gives the same prediction, so the clamp only keeps the division finite.
    norm_stg = stg_diff.to(dtype).flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    target = ratio * SCHEDULES[schedule](progress.to(dtype))
    return (target * norm_cfg / norm_stg).clamp(max=cap)
