"""The conditioning inputs of one branch (class labels, text states), as rows that can be picked
and broadcast to the sampler's batch."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass(frozen=True)
class Condition:
    """Keyword inputs of the model's `forward` / `embed`: `y` (B,) class labels, `text`
    (B, L, D_text) text states, `text_mask` (B, L) bool (True = real token). None means what the
    model makes of it: the null class for `y`, no text (cross-attention adds zero) for `text`.
    """

    y: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    def for_batch(self, batch: int) -> Condition:
        """Every tensor with its batch broadcast from 1 (or checked) to `batch`."""
        return Condition(**{k: _expand(k, v, batch) for k, v in self.kwargs().items()})

    def rows(self, index: torch.Tensor | None) -> Condition:
        """The rows `index` (None = all)."""
        if index is None:
            return self
        return Condition(**{k: None if v is None else v[index] for k, v in self.kwargs().items()})

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _expand(name: str, value: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if value is None or value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(
        f"{name} has batch {value.shape[0]} but the sampler's x_t has batch {batch}; "
        f"give {name} with batch {batch} or 1"
    )
