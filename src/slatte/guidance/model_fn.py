"""`guided_model_fn`: a model, its condition and guidance terms → the samplers' `model_fn`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .adaptive import adaptive_weights
from .combine import BranchPrediction, combine
from .condition import Condition
from .config import CFG, STG, in_window, window_progress
from .forked import PerturbedBranch, forked_predictions, naive_predictions
from .options import check_rescale

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_FORWARD_STEPS = ("embed", "run_blocks", "final")


def guided_model_fn(
    model: nn.Module,
    *,
    y: torch.Tensor | None = None,
    null_y: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    null_text: torch.Tensor | None = None,
    null_text_mask: torch.Tensor | None = None,
    cfg_scale: float | CFG = 1.0,
    stg: Sequence[STG] = (),
    rescale: float = 0.0,
    num_train_timesteps: int = 1000,
    fork: bool = True,
) -> ModelFn:
    """The sampler's `model_fn(x_t, t) -> prediction` for `model` with CFG and STG.

    Condition: `y` (B,) class labels and/or `text` (B, L, D_text) with `text_mask` (B, L) bool
    (True = real token); a batch of 1 is broadcast to the sampler's batch. The unconditional
    input for CFG is `null_y` (default None: the model's null class) and `null_text` /
    `null_text_mask` (e.g. the encoded empty prompt; default None: no text, which the model's
    cross-attention turns into a zero update). Text of different lengths is padded by the model's
    `cat_contexts` when both share one batch. The perturbed branches use the conditional input.

    `cfg_scale`: the CFG scale (1 = off: no unconditional branch), or a `CFG` (scale and step
    window). `stg`: STG terms, each one perturbed branch of the conditional input. `rescale` in
    [0, 1] (0 = off) as in the spec.
    The prediction is `e_u + w_cfg (e_c - e_u) + sum_p w_p (e_c - e_p)`; with a learned variance
    (`model.config.learn_sigma`, output channels 2C) only the first C channels (the mean) are
    guided and the variance channels are the conditional branch's.

    `t` passed to `model_fn` is (B,) on the training scale 0..num_train_timesteps-1; each term's
    step window is judged from it per row (`slatte.guidance.config` explains the convention).
    Outside a term's window its branch is not computed for that row.

    `fork=True` computes the blocks the perturbed branches share with the conditional one once
    (`slatte.guidance.forked`); `fork=False` runs one full forward per branch (the baseline;
    same result within float tolerance).
    """
    cfg = cfg_scale if isinstance(cfg_scale, CFG) else CFG(scale=cfg_scale)
    for term in stg:
        if not isinstance(term, STG):
            raise ValueError(f"stg must be a sequence of STG terms, got an element {term!r}")
        term.validate_for(model)
        if term.adaptive is not None:
            _check_adaptive(term, cfg)
    check_rescale("rescale", rescale)
    if fork and not all(hasattr(model, step) for step in _FORWARD_STEPS):
        raise ValueError(
            f"fork=True needs a model with the three-step forward {_FORWARD_STEPS}; "
            f"{type(model).__name__} lacks it: use fork=False"
        )
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps}")
    cond = Condition(y=y, text=text, text_mask=text_mask)
    uncond = _null_condition(cond, null_y, null_text, null_text_mask) if cfg.enabled else None
    # A term with scale 0 adds nothing, so its branch is never computed.
    terms = [term for term in stg if term.scale > 0]
    predictions = forked_predictions if fork else naive_predictions
    learn_sigma = bool(model.config.learn_sigma)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(
                f"model_fn takes t of shape ({batch},) for x_t of batch {batch}, got {tuple(t.shape)}"
            )
        cond_b = cond.for_batch(batch)
        uncond_b = uncond_rows = None
        if uncond is not None:
            present, uncond_rows = _rows(in_window(t, cfg.start, cfg.stop, num_train_timesteps))
            uncond_b = uncond.for_batch(batch) if present else None
        branches, active = [], []
        for term in terms:
            present, rows = _rows(in_window(t, term.start, term.stop, num_train_timesteps))
            if present:
                branches.append(PerturbedBranch(term.perturbations, rows))
                active.append(term)
        out = predictions(model, x_t, t, cond_b, uncond_b, uncond_rows, branches)

        channels = out.cond.shape[2] // 2 if learn_sigma else out.cond.shape[2]
        # (B, F, C_out, H, W): only the first `channels` are the prediction that is guided.
        mean = lambda pred: pred[:, :, :channels]
        e_c = mean(out.cond)
        uncond_pred = None
        if out.uncond is not None:
            uncond_pred = BranchPrediction(cfg.scale, mean(out.uncond), uncond_rows)
        perturbed = []
        for term, pred, branch in zip(active, out.perturbed, branches, strict=True):
            scale = term.scale
            if term.adaptive is not None:
                scale = _adaptive_scale(term, e_c, uncond_pred, mean(pred), branch.rows, t)
            perturbed.append(BranchPrediction(scale, mean(pred), branch.rows))
        guided = combine(e_c, uncond=uncond_pred, perturbed=perturbed, rescale=rescale)
        if not learn_sigma:
            return guided
        return torch.cat([guided, out.cond[:, :, channels:]], dim=2)

    def _adaptive_scale(
        term: STG,
        e_c: torch.Tensor,
        uncond_pred: BranchPrediction,
        e_p: torch.Tensor,
        rows: torch.Tensor | None,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """(R,) weights of an adaptive term for its rows; `_check_adaptive` made sure every one
        of them has the unconditional prediction."""
        cfg_term = torch.zeros_like(e_c)
        u_rows = slice(None) if uncond_pred.rows is None else uncond_pred.rows
        cfg_term[u_rows] = cfg.scale * (e_c[u_rows] - uncond_pred.pred.to(e_c.dtype))
        t_rows, e_c_rows = (t, e_c) if rows is None else (t[rows], e_c[rows])
        cfg_term = cfg_term if rows is None else cfg_term[rows]
        return adaptive_weights(
            cfg_term,
            e_c_rows - e_p,
            ratio=term.adaptive,
            cap=term.scale,
            progress=window_progress(t_rows, num_train_timesteps),
            schedule=term.adaptive_schedule,
        )

    return model_fn


def _check_adaptive(term: STG, cfg: CFG) -> None:
    """An adaptive term is measured against the CFG term, so CFG must cover its window."""
    if not cfg.enabled:
        raise ValueError(
            f"stg adaptive ratio {term.adaptive} keeps the STG term at a ratio to the CFG term, "
            "but cfg scale is 1 (no CFG): give a cfg scale != 1 or a fixed STG scale"
        )
    if term.start < cfg.start or term.stop > cfg.stop:
        raise ValueError(
            f"an adaptive stg term's window ({term.start}, {term.stop}) must lie within the cfg "
            f"window ({cfg.start}, {cfg.stop}), where the CFG term it is measured against exists"
        )


def _rows(mask: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """(any row selected, their indices or None for all rows) from a bool (B,) mask."""
    if bool(mask.all()):
        return True, None
    return bool(mask.any()), mask.nonzero().squeeze(1)


def _null_condition(
    cond: Condition,
    null_y: torch.Tensor | None,
    null_text: torch.Tensor | None,
    null_text_mask: torch.Tensor | None,
) -> Condition:
    """The unconditional input for CFG (None parts: the model's null class / no text)."""
    if cond.y is None and cond.text is None:
        raise ValueError(
            "cfg scale != 1 needs a condition to guide towards: give y (class labels) and/or "
            "text, or use cfg scale 1"
        )
    if cond.text is None and null_text is not None:
        raise ValueError("null_text was given without text; give both or neither")
    return Condition(
        y=null_y if cond.y is not None else None, text=null_text, text_mask=null_text_mask
    )
