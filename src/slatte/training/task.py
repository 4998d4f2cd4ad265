"""The trainer's seam: what model, what batch, what objective.

The trainer (`trainer.py`) owns everything a run does whatever it trains: the step-indexed data
order and per-sample randomness (exact resume), AdamW, EMA, mixed precision, `torch.compile`,
DDP / FSDP2, checkpoints, metrics and plots. A task says the rest: the model and its data, how
a batch becomes clean inputs and conditioning, how the model is called on them, which
objective (`diffusion.objectives`) it learns, and how its weights are written as a model
directory. `video_task.VideoDiTTask` trains slatte's video DiT from scratch or from a model
directory; `integrations.finetune.DiffusersFinetuneTask` fine-tunes a diffusers transformer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from ..diffusion.gaussian import ModelFn
from ..diffusion.objectives import Objective


class TrainTask(Protocol):
    #: The trained model, fp32 master weights on the training device; only parameters that
    #: require gradients are optimised.
    model: nn.Module
    dataset: Dataset
    #: Batches the dataset's items (None: torch's default collation).
    collate_fn: Callable[[list[Any]], Any] | None
    objective: Objective
    #: Probability that a sample's conditioning is dropped (classifier-free guidance training);
    #: the trainer draws the flags per sample, `model_fn` applies them.
    label_dropout: float
    #: Whether the checkpoint's model directory can be written by `models.io.save_model`
    #: (slatte's own models); other tasks always write sharded checkpoints, which hold the
    #: model directory their `save_model` writes.
    whole_checkpoints: bool

    def inputs(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, Any]:
        """The clean data x0 (B, ...) of a batch on `device`, and its conditioning."""
        ...

    def model_fn(self, model: nn.Module, cond: Any, drop: torch.Tensor) -> ModelFn:
        """`model` (possibly wrapped by DDP / compile) as ``f(x_t, t) -> prediction`` for the
        samples of `cond`, their conditioning dropped where `drop` (B,) is True."""
        ...

    def teacher_fn(self, cond: Any) -> ModelFn:
        """The frozen teacher as ``f(x_t, t) -> prediction`` (objectives with `needs_teacher`)."""
        ...

    def train_mode(self) -> None:
        """Put `model` in training mode (modules the trainer stands in for stay in eval)."""
        ...

    def shard(self, model: nn.Module, precision: str) -> None:
        """Shard `model` (the trained model or its EMA) in place with FSDP2."""
        ...

    def whole_model(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh, unsharded model on the CPU holding `state_dict` (whole weights)."""
        ...

    def save_model(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path
    ) -> None:
        """Write `state_dict` (whole weights of `model`, which may be sharded) as a model
        directory that the task's users load."""
        ...

    #: ``preview(ema, out_dir) -> paths``: write preview samples of the whole EMA model under
    #: `out_dir`; None when the task makes none (the trainer then never gathers the EMA for it).
    preview: Callable[[nn.Module, Path], list[Path]] | None


__all__ = ["TrainTask"]
