"""A linear layer and the tanh GELU after it as one GEMM, the activation in the epilogue.

The feed-forward layers of Wan2.1 and LTX-Video start with Linear -> GELU(tanh). Run apart, the
GELU is one more read and write of the widest activation in the model (N x 8,960 at Wan2.1-1.3B,
0.4 ms of a 1.7 ms layer on an H100, with or without torch.compile). cuBLASLt applies the same
tanh GELU to the fp32 accumulator before writing the result (`torch._addmm_activation`); the op
is a `torch.library` custom op so that torch.compile keeps it one call instead of splitting it
back into a GEMM and an elementwise kernel. Inference only: the backward would need the
pre-activation the fused call never writes, so there is no autograd formula (callers fall back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("slatte::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ weight.T + bias, approximate="tanh") for x (..., in), weight (out, in), bias
    (out), all of one dtype."""
    if not x.is_cuda:  # PyTorch's CPU `_addmm_activation` applies the exact (erf) GELU
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    rows = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(bias, rows, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])
