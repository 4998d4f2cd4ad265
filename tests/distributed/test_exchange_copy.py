"""The permuting copy before each Ulysses exchange, in one process."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from slatte.ops.sequence_parallel import _contiguous_by_rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [128, 36, 7])
def test_contiguous_by_rows_equals_contiguous(dtype, d):
    """Rows moved as 16/8/4-byte words where the sizes, strides and offset allow (d=128, 36),
    element by element where not (d=7): the same bytes as `contiguous()` either way."""
    x = torch.randn(2, 6, 33, d).to(dtype)
    views = [
        rearrange(x, "b (p h) n d -> p b n h d", p=2),  # head-major input, token-major send
        rearrange(x.transpose(1, 2), "b n (p h) d -> p b n h d", p=3),
        x[..., 1:].transpose(1, 2),  # an odd offset: no word fits
        x,  # already contiguous: returned as is
    ]
    for view in views:
        out = _contiguous_by_rows(view)
        assert out.is_contiguous() and out.dtype == dtype and out.shape == view.shape
        assert torch.equal(out, view.contiguous())
    assert _contiguous_by_rows(x) is x
