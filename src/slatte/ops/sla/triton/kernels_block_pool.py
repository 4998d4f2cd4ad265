"""Triton kernel for the block map's pooling (spec section 1): the mean of each block of rows of
q and of k, both in one launch, so that the pooled scores cost one kernel and one matmul.

The torch reductions it replaces (`block_map.mean_pool`, four of them for q and k) cost more
host time per forward than the GPU spends on them, and more than one Triton launch.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pool_block(
    X,
    OUT,
    stride_b,
    stride_h,
    stride_n,
    stride_d,
    N,
    BLOCK_ROWS,
    N_BLOCKS,
    D,
    bh,
    blk,
    H,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """OUT[bh, blk] (fp32, (B*H, N_BLOCKS, D) contiguous) = the mean of rows
    blk*BLOCK_ROWS .. of X[b, h] that exist (a ragged last block counts only its real rows)."""
    cols = tl.arange(0, BLOCK_D)
    cols_ok = cols < D
    base = X + (bh // H) * stride_b + (bh % H) * stride_h
    start = blk * BLOCK_ROWS
    end = tl.minimum(start + BLOCK_ROWS, N)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for first in range(start, end, CHUNK):
        rows = first + tl.arange(0, CHUNK)
        ok = (rows < end)[:, None] & cols_ok[None, :]
        x = tl.load(base + rows[:, None] * stride_n + cols[None, :] * stride_d, mask=ok, other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    # Sum, then divide by the count: what torch.mean does, so both differ only by sum order.
    mean = acc / (end - start).to(tl.float32)
    tl.store(OUT + (bh * N_BLOCKS + blk) * D + cols, mean, mask=cols_ok)


@triton.jit(do_not_specialize=["N_Q", "N_K", "NB_Q", "NB_K"])
def pool_qk_kernel(
    Q,
    K,
    Q_OUT,
    K_OUT,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    H,
    N_Q,
    N_K,
    BLOCK_Q,
    BLOCK_K,
    NB_Q,
    NB_K,
    D,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (max(NB_Q, NB_K), B*H, 2): program (blk, bh, 0) pools block blk of q's head bh into
    Q_OUT, (blk, bh, 1) block blk of k's into K_OUT; programs past a tensor's last block do
    nothing. Q, K: (B, H, N, D) with any strides; Q_OUT, K_OUT: fp32 (B, H, NB, D) contiguous.
    CHUNK rows are summed at a time (a power of 2)."""
    blk = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    if tl.program_id(2) == 0:
        if blk < NB_Q:
            _pool_block(
                Q, Q_OUT, stride_qb, stride_qh, stride_qn, stride_qd, N_Q, BLOCK_Q, NB_Q, D,
                bh, blk, H, CHUNK=CHUNK, BLOCK_D=BLOCK_D,
            )  # fmt: skip
    else:
        if blk < NB_K:
            _pool_block(
                K, K_OUT, stride_kb, stride_kh, stride_kn, stride_kd, N_K, BLOCK_K, NB_K, D,
                bh, blk, H, CHUNK=CHUNK, BLOCK_D=BLOCK_D,
            )  # fmt: skip
