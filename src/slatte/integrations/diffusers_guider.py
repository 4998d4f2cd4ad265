"""An STG guider for diffusers' modular pipelines (Wan, LTX, ...), in place of
`diffusers.guiders.SkipLayerGuidance`:

    from slatte.integrations.diffusers_guider import STGGuidance
    pipe.update_components(guider=STGGuidance(guidance_scale=5.0, stg_scale=1.0, stg_blocks=[8]))

Differences from `SkipLayerGuidance`, which runs a third full pass with diffusers' layer-skip
hooks:
- every STG strategy of `slatte.guidance.strategies` (whole block, attention residual, attention
  input, identity attention map), through the hooks of `slatte.integrations.diffusers_stg`;
- the perturbed branch is computed inside the conditional pass and forked from it at the first
  perturbed block (Wan, LTX), so the blocks before it run once ("fork, don't recompute");
- the attention strategies replace the attention module's output, whatever attention backend or
  processor computes it; diffusers' own attention-score skipping only intercepts SDPA and
  silently does nothing with other backends.

The guider asks the pipeline for one batch per condition (conditional, and unconditional while
CFG is on); during the conditional one it installs the STG hooks with weight 0
(`capture_perturbed`), so the transformer returns `e_c` unchanged, and keeps the perturbed rows'
`e_p` from the raw output. The combination is the spec's
`e_u + w_cfg (e_c − e_u) + w_stg (e_c − e_p)`, then diffusers' `rescale_noise_cfg` when
`guidance_rescale > 0`. Windows (`start`/`stop` for CFG, `stg_start`/`stg_stop` for STG) are
fractions of the inference steps, as in diffusers' guiders.

The same options as slatte's sampler: per-depth strategies (`stg_strategy` one name per block of
`stg_blocks`, one forked branch) and the adaptive scale (`stg_adaptive = ratio`: per sample and
step, `w_stg = min(stg_scale, ratio · schedule(progress) · ‖w_cfg (e_c − e_u)‖ / ‖e_c − e_p‖)`,
`slatte.guidance.adaptive`, with `progress = step / num_inference_steps`, the fraction the
windows use).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..guidance.adaptive import adaptive_weights
from ..guidance.config import per_block_strategies
from ..guidance.options import (
    check_blocks,
    check_ratio,
    check_rescale,
    check_scale,
    check_schedule,
    check_window,
)
from ..guidance.strategies import DEFAULT_STRATEGY, get_strategy
from .diffusers_stg import capture_perturbed

try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg
except ImportError as error:  # pragma: no cover - diffusers is an optional dependency
    raise ImportError(
        "slatte.integrations.diffusers_guider needs diffusers with guiders (>= 0.35): "
        "pip install 'diffusers>=0.35'"
    ) from error


class STGGuidance(BaseGuidance):
    """CFG + spatio-temporal skip guidance (module docstring).

    Args:
        guidance_scale: the CFG weight `w_cfg`; 1 turns CFG off (no unconditional batch).
        stg_scale: the STG weight `w_stg`; 0 turns STG off (no perturbed branch).
        stg_blocks: index or indices of the perturbed blocks (required) (Wan `blocks[i]`, LTX
            `transformer_blocks[i]`, Latte in execution order; `slatte.integrations.diffusers_stg`).
        stg_strategy: the name of one of `slatte.guidance.strategies.STRATEGIES`, or a list of
            names, one per block of `stg_blocks` (in the same order).
        stg_start, stg_stop: the STG window, fractions of the inference steps.
        stg_adaptive: None (a fixed `stg_scale`) or the ratio of the adaptive scale (module
            docstring); `stg_scale` is then the largest weight allowed. Needs CFG
            (`guidance_scale` != 1) on the whole STG window.
        stg_adaptive_schedule: how the ratio changes over the steps: `constant`, `decay`
            (ratio · (1 − progress)) or `rise` (ratio · progress).
        guidance_rescale: diffusers' `rescale_noise_cfg` factor (0 = off).
        fork: compute the blocks before the first perturbed one once for both branches.
        start, stop, enabled: the guider's (CFG) window and switch, as every diffusers guider.
    """

    _input_predictions = ["pred_cond", "pred_uncond"]

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 5.0,
        stg_scale: float = 1.0,
        stg_blocks: int | list[int] | None = None,
        stg_strategy: str | list[str] = DEFAULT_STRATEGY,
        stg_start: float = 0.0,
        stg_stop: float = 1.0,
        stg_adaptive: float | None = None,
        stg_adaptive_schedule: str = "constant",
        guidance_rescale: float = 0.0,
        fork: bool = True,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        super().__init__(start, stop, enabled)
        if stg_blocks is None:
            raise ValueError("stg_blocks is required: the index (or list of indices) to perturb")
        check_scale("guidance_scale", guidance_scale)
        check_scale("stg_scale", stg_scale)
        self.stg_blocks = check_blocks("stg_blocks", stg_blocks)
        if isinstance(stg_strategy, str):
            get_strategy(stg_strategy, what="stg_strategy")
        else:
            per_block_strategies(stg_strategy, self.stg_blocks)
        check_window("stg window (stg_start, stg_stop)", stg_start, stg_stop)
        if stg_adaptive is not None:
            check_ratio("stg_adaptive", stg_adaptive)
            _check_adaptive_covered(guidance_scale, (start, stop), (stg_start, stg_stop))
        check_schedule("stg_adaptive_schedule", stg_adaptive_schedule)
        check_rescale("guidance_rescale", guidance_rescale)
        self.guidance_scale = guidance_scale
        self.stg_scale = stg_scale
        self.stg_strategy = stg_strategy
        self.stg_adaptive = stg_adaptive
        self.stg_adaptive_schedule = stg_adaptive_schedule
        self.stg_start = stg_start
        self.stg_stop = stg_stop
        self.guidance_rescale = guidance_rescale
        self.fork = fork
        self._hooks: list[Any] = []
        self._pred_perturbed: torch.Tensor | None = None

    # -- the denoiser, per batch ---------------------------------------------------------------

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        if not (self.is_conditional and self._is_stg_enabled()):
            return
        self._pred_perturbed = None
        self._hooks.append(
            capture_perturbed(
                denoiser,
                blocks=list(self.stg_blocks),
                strategy=self.stg_strategy,
                store=self._keep_perturbed,
                fork=self.fork,
            )
        )

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _keep_perturbed(self, pred_perturbed: torch.Tensor) -> None:
        self._pred_perturbed = pred_perturbed

    # -- batches and combination ---------------------------------------------------------------

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list:
        return [
            self._prepare_batch(data, index, name)
            for index, name in enumerate(self._input_predictions[: self.num_conditions])
        ]

    def prepare_inputs_from_block_state(
        self, data: Any, input_fields: dict[str, str | tuple[str, str]]
    ) -> list:
        return [
            self._prepare_batch_from_block_state(input_fields, data, index, name)
            for index, name in enumerate(self._input_predictions[: self.num_conditions])
        ]

    def forward(
        self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None
    ) -> GuiderOutput:
        pred = pred_cond
        if self._is_cfg_enabled():
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if self._is_stg_enabled():
            pred_perturbed, self._pred_perturbed = self._pred_perturbed, None
            if pred_perturbed is None or pred_perturbed.shape != pred_cond.shape:
                raise ValueError(
                    "STGGuidance has no perturbed prediction of this step's conditional batch: "
                    "call prepare_models(transformer) before the conditional batch's forward "
                    "(as diffusers' modular pipelines do)"
                )
            diff = pred_cond - pred_perturbed
            pred = pred + self._stg_weight(pred_cond, pred_uncond, diff) * diff
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    def _stg_weight(
        self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None, diff: torch.Tensor
    ) -> float | torch.Tensor:
        """`stg_scale`, or the adaptive weight per sample (B, 1, ..., 1); the construction made
        sure CFG is on wherever STG is."""
        if self.stg_adaptive is None:
            return self.stg_scale
        batch = diff.shape[0]
        steps = self._num_inference_steps
        progress = torch.full((batch,), 0.0 if steps is None else self._step / steps)
        weights = adaptive_weights(
            self.guidance_scale * (pred_cond - pred_uncond),
            diff,
            ratio=self.stg_adaptive,
            cap=self.stg_scale,
            progress=progress.to(diff.device),
            schedule=self.stg_adaptive_schedule,
        )
        return weights.to(diff.dtype).reshape(batch, *(1,) * (diff.ndim - 1))

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._is_cfg_enabled() else 1

    def _in_steps(self, start: float, stop: float) -> bool:
        if self._num_inference_steps is None:
            return True
        first = int(start * self._num_inference_steps)
        last = int(stop * self._num_inference_steps)
        return first <= self._step < last

    def _is_cfg_enabled(self) -> bool:
        return (
            self._enabled
            and self._in_steps(self._start, self._stop)
            and not math.isclose(self.guidance_scale, 1.0)
        )

    def _is_stg_enabled(self) -> bool:
        return (
            self._enabled
            and self._in_steps(self.stg_start, self.stg_stop)
            and not math.isclose(self.stg_scale, 0.0)
        )


def _check_adaptive_covered(
    guidance_scale: float, cfg_window: tuple[float, float], stg_window: tuple[float, float]
) -> None:
    """The adaptive weight is measured against the CFG term, so CFG must be on over the whole
    STG window."""
    if math.isclose(guidance_scale, 1.0):
        raise ValueError(
            "stg_adaptive keeps the STG term at a ratio to the CFG term, but guidance_scale is 1 "
            "(no CFG): give guidance_scale != 1 or a fixed stg_scale (stg_adaptive=None)"
        )
    if stg_window[0] < cfg_window[0] or stg_window[1] > cfg_window[1]:
        raise ValueError(
            f"with stg_adaptive the STG window (stg_start, stg_stop) = {stg_window} must lie "
            f"within the CFG window (start, stop) = {cfg_window}"
        )


__all__ = ["STGGuidance"]
