"""The tanh-GELU feed-forward input layers of a diffusers transformer as one fused GEMM each.

`enable_fused_gelu(model)` makes every diffusers `GELU(approximate="tanh")` module (the first
layer of Wan2.1's and LTX-Video's feed-forward blocks) compute its projection and activation with
`slatte.ops.linear_gelu.linear_gelu_tanh` when nothing needs gradients; with gradients (training)
or mixed dtypes it runs as before. `disable_fused_gelu` undoes it.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from ..ops.linear_gelu import linear_gelu_tanh
from .diffusers_common import diffusers_version


def _fused_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    proj = self.proj
    needs_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad or any(p.requires_grad for p in proj.parameters())
    )
    same_dtype = hidden_states.dtype == proj.weight.dtype == proj.bias.dtype
    if needs_grad or not same_dtype:
        return type(self).forward(self, hidden_states)
    return linear_gelu_tanh(hidden_states, proj.weight, proj.bias)


def _tanh_gelu_layers(model: nn.Module) -> list[nn.Module]:
    diffusers_version()  # a clear ImportError without diffusers
    from diffusers.models.activations import GELU

    return [
        m
        for m in model.modules()
        if isinstance(m, GELU) and m.approximate == "tanh" and m.proj.bias is not None
    ]


def enable_fused_gelu(model: Any) -> int:
    """Fuse every tanh-GELU input layer of `model`'s feed-forward blocks; returns how many.
    Raises a ValueError when the model has none (nothing would change)."""
    layers = _tanh_gelu_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no diffusers GELU(approximate='tanh') layer with a bias "
            "to fuse (Wan2.1 and LTX-Video transformers have one per block)"
        )
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)
    return len(layers)


def disable_fused_gelu(model: Any) -> int:
    """Undo `enable_fused_gelu`; returns how many layers were restored."""
    restored = 0
    for layer in _tanh_gelu_layers(model):
        if "forward" in vars(layer):
            del layer.forward
            restored += 1
    return restored
