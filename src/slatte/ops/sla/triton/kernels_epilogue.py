"""The forward's linear epilogue as a kernel of its own, for kernel families that run the sparse
branch elsewhere (`ops/sla/hopper`): O = O_s + proj(O_l) + bias from q, the other family's O_s
and the pre-summed H_i, Z_i.

Persistent: a grid of about as many programs as the GPU holds at once (`launch.persistent_grid`),
each going through (query tile, head) pairs in a loop, so that the compiler's software pipeline
can load the next tile's q and O_s while the current one computes. With one tile per program
(the fused forward's grid) each program loads, computes and stores in sequence, and with one
such program per SM (the epilogue's register tiles) nothing hides the loads' latency."""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_common import add_linear_branch, load_rows, load_vector, store_rows, sums_index


@triton.jit(do_not_specialize=["N"])
def sla_epilogue_kernel(
    Q,
    O_S,
    W,
    BIAS,
    HBLK,
    HBLK_LO,
    ZBLK,
    OUT,
    O_L,
    DEN,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_ob,
    stride_oh,
    stride_on,
    BH,
    H,
    N,
    eps,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    LUT_BLOCK_Q: tl.constexpr,
    FEATURE: tl.constexpr,
    LINEAR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    H_PAIR: tl.constexpr,
    STORE_AUX: tl.constexpr,
    DOT_PREC: tl.constexpr,
    LIN_CHUNK: tl.constexpr,
    SHARED_SUMS: tl.constexpr,
):
    """Grid: (programs,); program p takes the tiles p, p + programs, ... of the
    cdiv(N, BLOCK_M) * BH tiles of BLOCK_M query rows, head-major (consecutive tiles are
    consecutive rows of one head). BLOCK_M divides LUT_BLOCK_Q, so a tile lies in one query
    block.

    Per tile: O_s (contiguous (B*H, N, D), written by the other family) plus the linear branch
    (LINEAR, `add_linear_branch`: H_i, Z_i at HBLK, ZBLK; H_PAIR, SHARED_SUMS, LIN_CHUNK as
    there) plus the bias, stored into OUT (strided, the caller's layout, as Q). STORE_AUX
    (training): O_l (fp32) into O_L and the denominator into DEN, both (B*H, N, ...).
    """
    n_m = tl.cdiv(N, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if HAS_BIAS:
        bias = load_vector(BIAS + offs_d, offs_d, D, BLOCK_D)
    for tile in tl.range(tl.program_id(0), n_m * BH, tl.num_programs(0)):
        bh = (tile // n_m).to(tl.int64)
        pid_m = tile % n_m
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        rows = bh * N + offs_m  # (rows of the contiguous (B*H, N, ...) state)
        q = load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, offs_d, row_ok, D)
        out = load_rows(O_S, rows, D, offs_d, row_ok, D).to(tl.float32)
        if LINEAR:
            q_block = bh * tl.cdiv(N, LUT_BLOCK_Q) + (pid_m * BLOCK_M) // LUT_BLOCK_Q
            out, den = add_linear_branch(
                out, q, sums_index(q_block, bh, SHARED_SUMS), rows, row_ok, offs_d, W, HBLK,
                HBLK_LO, ZBLK, O_L, eps, D, BLOCK_D, FEATURE, H_PAIR, STORE_AUX, DOT_PREC,
                LIN_CHUNK,
            )  # fmt: skip
            if STORE_AUX:
                tl.store(DEN + rows, den, mask=row_ok)
        if HAS_BIAS:
            out += bias[None, :]
        store_rows(OUT + b * stride_ob + h * stride_oh, offs_m, stride_on, offs_d, row_ok, out, D)
