"""The tanh-GELU feed-forward input layers of a diffusers transformer as one fused GEMM each.

`enable_fused_gelu(model)` swaps every diffusers `GELU(approximate="tanh")` module (the first
layer of Wan2.1's and LTX-Video's feed-forward blocks) for a `FusedTanhGELU` that computes its
projection and activation with `slatte.ops.linear_gelu.linear_gelu_tanh` when nothing needs
gradients; with gradients (training) or mixed dtypes the original module runs. The swap keeps the
same `proj` Linear, so parameter names and `save_pretrained` are unchanged.
`disable_fused_gelu` puts the original modules back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..ops.linear_gelu import linear_gelu_tanh
from .diffusers_common import diffusers_version


class FusedTanhGELU(nn.Module):
    """A diffusers tanh `GELU` layer through the fused op; `original` is the module it replaced
    (kept out of the module tree, so its shared `proj` is not listed twice)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.proj = original.proj
        self._original = (original,)

    @property
    def original(self) -> nn.Module:
        return self._original[0]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        proj = self.proj
        needs_grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(p.requires_grad for p in proj.parameters())
        )
        same_dtype = hidden_states.dtype == proj.weight.dtype == proj.bias.dtype
        if needs_grad or not same_dtype:
            return self.original(hidden_states)
        return linear_gelu_tanh(hidden_states, proj.weight, proj.bias)


def _replace_children(model: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> int:
    """Put `replace(child)` in place of every submodule for which it is not None; how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replace(child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def enable_fused_gelu(model: Any) -> int:
    """Fuse every tanh-GELU input layer of `model`'s feed-forward blocks; returns how many are
    fused. Raises a ValueError when the model has none (nothing would change)."""
    diffusers_version()  # a clear ImportError without diffusers
    from diffusers.models.activations import GELU

    def fuse(module: nn.Module) -> nn.Module | None:
        if (
            isinstance(module, GELU)
            and module.approximate == "tanh"
            and module.proj.bias is not None
        ):
            return FusedTanhGELU(module)
        return None

    _replace_children(model, fuse)
    fused = sum(isinstance(m, FusedTanhGELU) for m in model.modules())
    if not fused:
        raise ValueError(
            f"{type(model).__name__} has no diffusers GELU(approximate='tanh') layer with a bias "
            "to fuse (Wan2.1 and LTX-Video transformers have one per block)"
        )
    return fused


def disable_fused_gelu(model: Any) -> int:
    """Undo `enable_fused_gelu`; returns how many layers were restored."""
    return _replace_children(model, lambda m: m.original if isinstance(m, FusedTanhGELU) else None)
