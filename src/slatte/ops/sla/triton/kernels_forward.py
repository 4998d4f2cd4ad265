"""The fused SLA forward kernel: block-sparse FlashAttention over the critical key blocks and the
linear branch by pre-aggregation, with the projection and the sum fused into the epilogue."""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_common import (
    add_linear_branch,
    load_block,
    load_rows,
    load_vector,
    store_rows,
    sums_index,
)

LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["N", "N_CRIT"])
def sla_fwd_kernel(
    Q,
    K,
    V,
    K_TMA,
    V_TMA,
    W,
    BIAS,
    HBLK,
    HBLK_LO,
    ZBLK,
    CRIT_LUT,
    OUT,
    O_S,
    O_L,
    LSE,
    DEN,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_on,
    H,
    N,
    N_CRIT,
    qk_scale,
    eps,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LUT_BLOCK_Q: tl.constexpr,
    LUT_BLOCK_K: tl.constexpr,
    FEATURE: tl.constexpr,
    LINEAR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    H_PAIR: tl.constexpr,
    STORE_AUX: tl.constexpr,
    STORE_LSE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    KV_TMA: tl.constexpr,
    LIN_CHUNK: tl.constexpr,
    SHARED_SUMS: tl.constexpr,
):
    """One program per (BLOCK_M query rows, head). Grid: (cdiv(N, BLOCK_M), B * H).
    K_TMA, V_TMA: with KV_TMA, tensor descriptors of K and V for BLOCK_N-row tiles (the key
    blocks come as bulk copies); otherwise unused.

    Sparse branch: online softmax over the N_CRIT key blocks that CRIT_LUT lists for this row's
    query block (LSE kept in log2 units). Linear branch (LINEAR): O_l = phi(q) H_i /
    (phi(q) Z_i + eps) with H_i (D x D) and Z_i (D) of this query block pre-summed over S(i)
    (HBLK, ZBLK: `mask_gemm_kernel`); an empty S(i) gives H_i = Z_i = 0, hence O_l = 0.
    SHARED_SUMS (linear_scope "all"): HBLK, ZBLK hold one H, Z per head, which every query block
    reads (`sums_index`).
    H_PAIR (bf16, training): H_i is the bf16 pair HBLK + HBLK_LO of the backward's exact sum.
    Output O = O_s + O_l W^T + bias, in one pass: no O(N^2) buffer. LIN_CHUNK (a power of two
    up to BLOCK_D): columns of O_l per step of the linear epilogue (`add_linear_branch`).
    BLOCK_D: the feature tiles' width (`kernels_common`, head dims). Where another kernel family
    ran the sparse branch, `kernels_epilogue` adds the linear one instead.
    STORE_AUX: the backward's state (O_S, LSE, O_L, DEN). STORE_LSE: the LSE (inference: without
    STORE_AUX it is stored alone).
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    q_block = bh * tl.cdiv(N, LUT_BLOCK_Q) + (pid_m * BLOCK_M) // LUT_BLOCK_Q

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N
    rows = bh * N + offs_m  # (rows of the contiguous (B*H, N, ...) saved state)
    q = load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, offs_d, row_ok, D)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t in range(N_CRIT):
        block = tl.load(CRIT_LUT + q_block * N_CRIT + t)
        for sub in tl.static_range(LUT_BLOCK_K // BLOCK_N):
            first = block * LUT_BLOCK_K + sub * BLOCK_N
            offs_k = first + offs_n
            col_ok = offs_k < N
            k = load_block(K_TMA, k_base, b, h, first, offs_k, stride_kn, offs_d, col_ok, D, KV_TMA)
            v = load_block(V_TMA, v_base, b, h, first, offs_k, stride_vn, offs_d, col_ok, D, KV_TMA)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new
    o_s = acc / l_i[:, None]
    out = o_s

    if LINEAR:
        out, den = add_linear_branch(
            out, q, sums_index(q_block, bh, SHARED_SUMS), rows, row_ok, offs_d, W, HBLK, HBLK_LO,
            ZBLK, O_L, eps, D, BLOCK_D, FEATURE, H_PAIR, STORE_AUX, DOT_PREC, LIN_CHUNK,
        )  # fmt: skip
    if HAS_BIAS:
        out += load_vector(BIAS + offs_d, offs_d, D, BLOCK_D)[None, :]
    o_base = OUT + b * stride_ob + h * stride_oh
    store_rows(o_base, offs_m, stride_on, offs_d, row_ok, out, D)
    if STORE_AUX or STORE_LSE:
        tl.store(LSE + rows, m_i + tl.math.log2(l_i), mask=row_ok)
    if STORE_AUX:
        store_rows(O_S, rows, D, offs_d, row_ok, o_s, D)
        if LINEAR:
            tl.store(DEN + rows, den, mask=row_ok)
