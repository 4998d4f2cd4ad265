"""LayerNorm that always normalises in fp32, whatever the model or autocast dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` computed in fp32 and returned in the input's dtype.

    Mean and variance over a few thousand bf16 features lose too much precision; the upcast is
    cheap next to the matmuls around it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
