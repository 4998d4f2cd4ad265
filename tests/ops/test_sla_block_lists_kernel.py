"""The transposed block lists' kernel against the torch sort it replaces, bit for bit.

Without CUDA the kernel runs through Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from slatte.ops.sla.block_map import block_scores, classify, transpose_lists
from slatte.ops.sla.triton import block_map_launchers
from slatte.ops.triton_interpreter import triton_interpreting

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


def random_lut(b: int, h: int, n_rows: int, n: int, n_cols: int, seed: int) -> torch.Tensor:
    """int32 (b, h, n_rows, n): per row n distinct random columns of [0, n_cols), ascending."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.rand(b, h, n_rows, n_cols, generator=g).argsort(-1)[..., :n]
    return picks.sort(-1).values.to(torch.int32).to(DEVICE)


def assert_same(lut: torch.Tensor, n_cols: int) -> None:
    want_rows, want_starts = transpose_lists(lut, n_cols, use_kernel=False)
    # The kernel itself, not the dispatch: a dispatch that fell back to the sort would make
    # this comparison pass without running the kernel (test_transpose_lists_dispatch).
    got_rows, got_starts = block_map_launchers.transpose_lists(lut, n_cols)
    assert got_rows.dtype == got_starts.dtype == torch.int32
    assert got_rows.shape == want_rows.shape and got_starts.shape == want_starts.shape
    assert torch.equal(got_starts, want_starts), (tuple(lut.shape), n_cols)
    assert torch.equal(got_rows, want_rows), (tuple(lut.shape), n_cols)


def test_torch_lists_by_hand():
    """The spec both paths follow: rows 0: {0, 2}, 1: {1, 2}, 2: {0, 1} over 4 columns."""
    lut = torch.tensor([[[[0, 2], [1, 2], [0, 1]]]], dtype=torch.int32)
    rows, starts = transpose_lists(lut, 4, use_kernel=False)
    assert rows.tolist() == [[[0, 2, 1, 2, 0, 1]]]
    assert starts.tolist() == [[[0, 2, 4, 6, 6]]]  # column 3 is in no list


@needs_kernel
def test_kernel_by_hand():
    lut = torch.tensor([[[[0, 2], [1, 2], [0, 1]]]], dtype=torch.int32, device=DEVICE)
    rows, starts = block_map_launchers.transpose_lists(lut, 4)
    assert rows.tolist() == [[[0, 2, 1, 2, 0, 1]]]
    assert starts.tolist() == [[[0, 2, 4, 6, 6]]]


@needs_kernel
@pytest.mark.parametrize("n_cols", [1, 5, 64, 130])
@pytest.mark.parametrize("n_rows", [1, 3, 37])
def test_kernel_equals_sort(n_rows, n_cols):
    # One column per row, about half of them, all of them (every row lists every column).
    for n in sorted({1, (n_cols + 1) // 2, n_cols}):
        assert_same(random_lut(2, 1, n_rows, n, n_cols, seed=n_rows * n_cols + n), n_cols)


@needs_kernel
def test_kernel_several_tiles():
    """More rows than a row tile, more entries than an entry tile, several column tiles, with
    columns that no row lists (a start repeated) and heads over two dims."""
    assert_same(random_lut(2, 2, 130, 20, 70, seed=1), 70)
    lut = random_lut(1, 2, 100, 3, 200, seed=2)
    assert_same(lut, 200)
    assert (transpose_lists(lut, 200, use_kernel=False)[1].diff(dim=-1) == 0).any()


@needs_kernel
@pytest.mark.parametrize("n", [33, 200])
def test_kernel_on_the_classified_lut(n):
    """The LUT that the backward transposes: `classify`'s, from pooled scores."""
    g = torch.Generator().manual_seed(n)
    q, k = (torch.randn(2, 2, n, 16, generator=g).to(DEVICE) for _ in range(2))
    scores = block_scores(q, k, 16, 16, use_kernel=False)
    lut = classify(scores, 0.3, 0.2, use_kernel=False)[1]
    assert_same(lut, scores.shape[-1])


@needs_kernel
def test_transpose_lists_dispatch(monkeypatch):
    """True runs the kernel, False the sort, None the kernel exactly on CUDA."""
    launched = []
    kernel = block_map_launchers.transpose_lists

    def spy(*args):
        launched.append(True)
        return kernel(*args)

    monkeypatch.setattr(block_map_launchers, "transpose_lists", spy)
    lut = random_lut(1, 1, 3, 2, 5, seed=3)
    transpose_lists(lut, 5, use_kernel=True)
    assert launched == [True]
    transpose_lists(lut, 5, use_kernel=False)
    assert launched == [True]
    transpose_lists(lut, 5)
    assert launched == [True] * (1 + (DEVICE == "cuda"))


def test_kernel_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lut = torch.zeros(1, 1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="transpose_lists's kernel needs a CUDA tensor"):
        transpose_lists(lut, 1, use_kernel=True)
