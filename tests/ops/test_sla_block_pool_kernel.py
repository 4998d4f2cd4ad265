"""The block map's pooling kernel (q and k in one launch) against `mean_pool`, and the pooled
scores it feeds against the torch path.

Without CUDA the kernel runs through Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from slatte.ops.sla.block_map import block_scores, mean_pool
from slatte.ops.sla.triton import block_map_launchers
from slatte.ops.triton_interpreter import triton_interpreting

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


def make_qk(n: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q a (B, H, N, D) view of (B, N, H, D) storage (as layout="bnhd" passes it), k contiguous;
    an offset per head, so that a head or batch mixed up changes the means."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n, 3, d, generator=g) + torch.arange(3.0)[:, None]
    k = torch.randn(2, 3, n, d, generator=g) - torch.arange(6.0).view(2, 3, 1, 1)
    return q.to(dtype).to(DEVICE).transpose(1, 2), k.to(dtype).to(DEVICE)


def assert_pooled(got: torch.Tensor, x: torch.Tensor, block: int) -> None:
    want = mean_pool(x, block)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    # Means of at most 64 rows: the two sum orders differ by a few fp32 roundings, far below
    # what a wrong row, a wrong count or a lost ragged block would change.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kernel_equals_mean_pool(n, dtype):
    q, k = make_qk(n, 24, dtype, seed=n)  # D = 24: a feature tile wider than the features
    for block_q, block_k in [(16, 64), (64, 16)]:
        qb, kb = block_map_launchers.pool_qk(q, k, block_q, block_k)
        assert_pooled(qb, q, block_q)
        assert_pooled(kb, k, block_k)


@needs_kernel
def test_kernel_k_strided_q_contiguous():
    """The other way round, at a power-of-2 head dim and 128-row blocks (pooled in steps)."""
    k, q = make_qk(300, 64, torch.bfloat16, seed=1)
    qb, kb = block_map_launchers.pool_qk(q, k, 128, 32)
    assert_pooled(qb, q, 128)
    assert_pooled(kb, k, 32)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_block_scores_kernel_equals_torch(dtype):
    q, k = make_qk(100, 16, dtype, seed=2)
    want = block_scores(q, k, 32, 16, use_kernel=False)
    got = block_scores(q, k, 32, 16, use_kernel=True)
    assert got.dtype == torch.float32 and got.shape == want.shape == (2, 3, 4, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_block_scores_dispatch(monkeypatch):
    """True pools with the kernel (fp16, bf16, fp32), fp64 with `mean_pool`; None takes the
    kernel exactly on CUDA."""
    launched = []
    kernel = block_map_launchers.pool_qk

    def spy(q, k, *args):
        launched.append(q.dtype)
        return kernel(q, k, *args)

    monkeypatch.setattr(block_map_launchers, "pool_qk", spy)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        q, k = make_qk(20, 8, dtype, seed=3)
        block_scores(q, k, 16, 16, use_kernel=True)
    assert launched == [torch.float16, torch.bfloat16, torch.float32]
    launched.clear()
    block_scores(q.float(), k.float(), 16, 16)
    assert launched == ([torch.float32] if DEVICE == "cuda" else [])


def test_kernel_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="block_scores's kernel needs a CUDA tensor"):
        block_scores(x, x, 16, 16, use_kernel=True)
