"""The permuting copy before each Ulysses exchange, in one process."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from slatte.ops.sequence_parallel import _contiguous_by_rows, _row_word


def _views(dtype: torch.dtype, d: int) -> list[torch.Tensor]:
    x = torch.randn(2, 6, 33, d).to(dtype)
    return [
        rearrange(x, "b (p h) n d -> p b n h d", p=2),  # head-major input, token-major send
        rearrange(x.transpose(1, 2), "b n (p h) d -> p b n h d", p=3),
        x[..., 1:].transpose(1, 2),  # an odd offset
        x,  # already contiguous
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [128, 36, 7])
def test_contiguous_by_rows_equals_contiguous(dtype, d):
    for view in _views(dtype, d):
        out = _contiguous_by_rows(view)
        assert out.is_contiguous() and out.dtype == dtype and out.shape == view.shape
        assert torch.equal(out, view.contiguous())


def test_rows_move_in_the_widest_word_that_fits():
    """128 bf16 = 256 bytes per row: 16-byte words; 36 bf16 = 72 bytes: 8; 7 bf16: none wider
    than an element; an odd offset (one element in) or a strided last dim: none either."""
    head_major, _, shifted, _ = _views(torch.bfloat16, 128)
    assert _row_word(head_major) == torch.complex128
    assert _row_word(_views(torch.bfloat16, 36)[0]) == torch.int64
    assert _row_word(_views(torch.float32, 7)[0]) is None  # 28 bytes: only 4-byte words
    assert _row_word(_views(torch.bfloat16, 7)[0]) is None  # 14 bytes
    assert _row_word(shifted) is None
    assert _row_word(head_major.transpose(-1, -2)) is None
