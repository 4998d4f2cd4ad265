"""The SLA backward kernels: FlashAttention-2 style dq (over each query block's critical list)
and dk/dv (over each key block's transposed list), with the linear branch's gradients from the
per-block sums H_i, Z_i (query side, the dq kernel's epilogue) and dH^(j), dZ^(j) (key side,
`key_linear_share`, whose result seeds the dk/dv loop's accumulators: computed in that kernel's
prologue, or in a kernel of its own where that is faster)."""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_common import (
    bf16_pair,
    dot_exact_b,
    feature_map,
    feature_map_grad,
    load_block,
    load_rows,
    load_tile,
    load_vector,
    round_tf32,
    rows_mask,
    store_tile,
    store_vector,
    sums_index,
)


@triton.jit(do_not_specialize=["N", "N_CRIT"])
def sla_bwd_dq_kernel(
    Q,
    K,
    V,
    K_TMA,
    V_TMA,
    DO,
    DO_L,
    LSE,
    DELTA_S,
    DEN,
    DELTA_L,
    HBLK,
    HBLK_LO,
    ZBLK,
    CRIT_LUT,
    DQ,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dqb,
    stride_dqh,
    stride_dqn,
    H,
    N,
    N_CRIT,
    qk_scale,
    sm_scale,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LUT_BLOCK_Q: tl.constexpr,
    LUT_BLOCK_K: tl.constexpr,
    FEATURE: tl.constexpr,
    LINEAR: tl.constexpr,
    DOT_PREC: tl.constexpr,
    SPLIT: tl.constexpr,
    PAIR: tl.constexpr,
    KV_TMA: tl.constexpr,
    SPARSE_DONE: tl.constexpr,
    SHARED_SUMS: tl.constexpr,
):
    """dq for BLOCK_M query rows of one head. Grid: (cdiv(N, BLOCK_M), B * H).

    Sparse: dS = P o (dO V^T - Delta_s), dq = scale dS K over the critical blocks. Linear:
    with G = dO_l H_i^T, Delta_l = dO_l . O_l = rowsum(phi(q) o G) / den (stored in DELTA_L for
    the key side), d phi(q) = (G - Delta_l Z_i^T) / den, then the chain rule through phi.
    H_i is fp32 (HBLK), or with PAIR (bf16 activations) a bf16 pair HBLK + HBLK_LO.
    Delta_l is taken from the same G and phi(q) it cancels against (not from the forward's O_l):
    where S(i) holds one key row, d phi(q) is ~0 and any mismatch between the two terms would be
    all that is left.
    DO, DO_L and the per-row LSE / DELTA / DEN buffers are contiguous (B*H, N, ...).
    K_TMA, V_TMA: as in `sla_fwd_kernel`. SPARSE_DONE: another kernel family wrote the sparse
    branch's dq into DQ; this kernel adds the linear branch's share to it.
    SHARED_SUMS (linear_scope "all"): one H, Z per head in HBLK, ZBLK (`sums_index`).
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
    rows = bh * N + offs_m
    q = load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, offs_d, row_ok, D)
    do = load_rows(DO, rows, D, offs_d, row_ok, D)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    delta_s = tl.load(DELTA_S + rows, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    dq_ok = rows_mask(row_ok[:, None], offs_d, D)
    if SPARSE_DONE:
        # Another kernel family (`ops/sla/hopper`) wrote the sparse branch's dq into DQ.
        dq = tl.load(dq_ptrs, mask=dq_ok, other=0.0).to(tl.float32)
    else:
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for t in range(N_CRIT):
            block = tl.load(CRIT_LUT + q_block * N_CRIT + t)
            for sub in tl.static_range(LUT_BLOCK_K // BLOCK_N):
                first = block * LUT_BLOCK_K + sub * BLOCK_N
                offs_k = first + offs_n
                col_ok = offs_k < N
                k = load_block(
                    K_TMA, k_base, b, h, first, offs_k, stride_kn, offs_d, col_ok, D, KV_TMA
                )
                v = load_block(
                    V_TMA, v_base, b, h, first, offs_k, stride_vn, offs_d, col_ok, D, KV_TMA
                )
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
                p = tl.where(col_ok[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
                ds = p * (dp - delta_s[:, None])
                dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
        dq = dq * sm_scale

    if LINEAR:
        do_l = load_rows(DO_L, rows, D, offs_d, row_ok, D)
        den = tl.load(DEN + rows, mask=row_ok, other=1.0)
        sums = sums_index(q_block, bh, SHARED_SUMS)
        offs_h = sums * D * D + offs_d[:, None] * D + offs_d[None, :]
        z_i = load_vector(ZBLK + sums * D + offs_d, offs_d, D, BLOCK_D)
        if PAIR:  # H_i as a bf16 pair: exact products with the bf16 dO_l
            g = tl.dot(do_l, tl.trans(load_tile(HBLK + offs_h, offs_d, offs_d, D, BLOCK_D)))
            g = tl.dot(do_l, tl.trans(load_tile(HBLK_LO + offs_h, offs_d, offs_d, D, BLOCK_D)), g)
        else:
            g = dot_exact_b(
                do_l.to(tl.float32), tl.trans(load_tile(HBLK + offs_h, offs_d, offs_d, D, BLOCK_D)),
                tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), SPLIT, DOT_PREC,
            )  # fmt: skip
        q32 = q.to(tl.float32)
        fq = feature_map(q32, FEATURE, D)
        # phi(q) as the forward rounded it (its den was built from this one).
        delta_l = tl.sum(fq.to(q.dtype).to(tl.float32) * g, 1) / den
        tl.store(DELTA_L + rows, delta_l, mask=row_ok)
        dfq = (g - delta_l[:, None] * z_i[None, :]) / den[:, None]
        dq += feature_map_grad(q32, fq, dfq, FEATURE)

    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=dq_ok)


@triton.jit
def key_linear_share(
    k, v, col_ok, DHBLK, DHBLK_LO, DZBLK, sums, offs_d, sm_scale, D: tl.constexpr,
    FEATURE: tl.constexpr, DOT_PREC: tl.constexpr, SPLIT: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    """The linear branch's share of (dk, dv) for the key rows k, v (rows not `col_ok` are
    padding) of a key block whose dH, dZ lie at index `sums` of DHBLK, DZBLK (`sums_index`),
    fp32, dk's in units of 1 / sm_scale (the dk/dv kernel applies sm_scale at its end). With
    dH^(j), dZ^(j) summed over the query blocks whose S(i) holds this key block:
    d phi(k) = v dH^T + dZ, dv = phi(k) dH. dH is fp32 (DHBLK), or with PAIR (bf16 activations)
    a bf16 pair DHBLK + DHBLK_LO whose products are exact in fp32.
    """
    k32 = k.to(tl.float32)
    fk = tl.where(col_ok[:, None], feature_map(k32, FEATURE, D), 0.0)
    block_d: tl.constexpr = offs_d.shape[0]
    offs_dh = sums * D * D + offs_d[:, None] * D + offs_d[None, :]
    dz = load_vector(DZBLK + sums * D + offs_d, offs_d, D, block_d)
    # dH unrounded in both products: v dH^T and dZ cancel where the query rows' O_l is close
    # to v, and dv = phi(k) dH sums same-signed terms (relu / softmax features), where the
    # one-sided error of dH truncated by the tensor cores adds up.
    dz_rows = tl.zeros(k.shape, dtype=tl.float32) + dz[None, :]
    # phi(k) rounded as in the forward's sums (exact in tf32 and in bf16).
    fk_r = fk.to(k.dtype)
    if PAIR:
        dh_hi = load_tile(DHBLK + offs_dh, offs_d, offs_d, D, block_d)
        dh_lo = load_tile(DHBLK_LO + offs_dh, offs_d, offs_d, D, block_d)
        dfk = tl.dot(v, tl.trans(dh_hi), dz_rows)
        dfk = tl.dot(v, tl.trans(dh_lo), dfk)
        dv = tl.dot(fk_r, dh_hi)
        dv = tl.dot(fk_r, dh_lo, dv)
    else:
        dh = load_tile(DHBLK + offs_dh, offs_d, offs_d, D, block_d)
        dfk = dot_exact_b(v.to(tl.float32), tl.trans(dh), dz_rows, SPLIT, DOT_PREC)
        dv = dot_exact_b(
            fk_r.to(tl.float32), dh, tl.zeros(k.shape, dtype=tl.float32), SPLIT, DOT_PREC
        )
    return feature_map_grad(k32, fk, dfk, FEATURE) / sm_scale, dv


@triton.jit(do_not_specialize=["N", "N_CRIT"])
def sla_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA_S,
    DHBLK,
    DHBLK_LO,
    DZBLK,
    DK_LIN,
    DV_LIN,
    CRIT_ROWS,
    CRIT_STARTS,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    H,
    N,
    N_CRIT,
    qk_scale,
    sm_scale,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LUT_BLOCK_Q: tl.constexpr,
    LUT_BLOCK_K: tl.constexpr,
    FEATURE: tl.constexpr,
    LINEAR: tl.constexpr,
    DOT_PREC: tl.constexpr,
    SPLIT: tl.constexpr,
    PAIR: tl.constexpr,
    LIN_PROLOGUE: tl.constexpr,
    SPARSE_DONE: tl.constexpr,
    SHARED_SUMS: tl.constexpr,
):
    """dk, dv for BLOCK_N key rows of one head. Grid: (cdiv(N, BLOCK_N), B * H).

    Walks the query blocks for which this key block is critical (this head's
    CRIT_ROWS[CRIT_STARTS[j] : CRIT_STARTS[j + 1]], the transposed critical lists). LINEAR: the
    accumulators start from the linear branch's share instead of zero. LIN_PROLOGUE: the share
    is computed here before the loop (`key_linear_share` from dH^(j) in DHBLK (+ DHBLK_LO with
    PAIR) and dZ^(j) in DZBLK), where its D x D tiles are dead by the time the loop's state is
    live; else it is read from DK_LIN, DV_LIN (fp32, contiguous (B*H, N, D), from
    `sla_bwd_key_linear_kernel`). Which is faster depends on the tiles (`tiles.tiles`).
    After the loop, next to the accumulators, the share made the loop spill.
    SPARSE_DONE: another kernel family wrote the sparse branch's dk, dv into DK, DV; the loop is
    skipped and the linear share is added to them.
    SHARED_SUMS (linear_scope "all"): one dH, dZ per head in DHBLK, DZBLK (`sums_index`).
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    n_q_blocks = tl.cdiv(N, LUT_BLOCK_Q)
    k_block = bh * tl.cdiv(N, LUT_BLOCK_K) + (pid_n * BLOCK_N) // LUT_BLOCK_K

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < N
    k = load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, offs_d, col_ok, D)
    v = load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, offs_d, col_ok, D)
    q_base = Q + b * stride_qb + h * stride_qh
    if LINEAR and LIN_PROLOGUE:
        dk, dv = key_linear_share(
            k, v, col_ok, DHBLK, DHBLK_LO, DZBLK, sums_index(k_block, bh, SHARED_SUMS), offs_d,
            sm_scale, D, FEATURE, DOT_PREC, SPLIT, PAIR,
        )  # fmt: skip
    elif LINEAR:
        dk = load_rows(DK_LIN + bh * N * D, offs_n, D, offs_d, col_ok, D)
        dv = load_rows(DV_LIN + bh * N * D, offs_n, D, offs_d, col_ok, D)
    else:
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if not SPARSE_DONE:
        start = tl.load(CRIT_STARTS + k_block + bh)
        end = tl.load(CRIT_STARTS + k_block + bh + 1)
        for t in range(start, end):
            block = tl.load(CRIT_ROWS + bh * n_q_blocks * N_CRIT + t)
            for sub in tl.static_range(LUT_BLOCK_Q // BLOCK_M):
                offs_q = block * LUT_BLOCK_Q + sub * BLOCK_M + offs_m
                row_ok = offs_q < N
                rows = bh * N + offs_q
                q = load_rows(q_base, offs_q, stride_qn, offs_d, row_ok, D)
                do = load_rows(DO, rows, D, offs_d, row_ok, D)
                lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
                delta_s = tl.load(DELTA_S + rows, mask=row_ok, other=0.0)
                s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
                p_t = tl.math.exp2(s_t - lse[None, :])
                dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
                dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                ds_t = p_t * (dp_t - delta_s[None, :])
                dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    dk = dk * sm_scale
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    kv_ok = rows_mask(col_ok[:, None], offs_d, D)
    if SPARSE_DONE:  # the sparse branch's dk, dv, written by another kernel family
        dk += tl.load(dk_ptrs, mask=kv_ok, other=0.0).to(tl.float32)
        dv += tl.load(dv_ptrs, mask=kv_ok, other=0.0).to(tl.float32)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit(do_not_specialize=["N"])
def sla_bwd_key_linear_kernel(
    K,
    V,
    DHBLK,
    DHBLK_LO,
    DZBLK,
    DK_LIN,
    DV_LIN,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    H,
    N,
    sm_scale,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LUT_BLOCK_K: tl.constexpr,
    FEATURE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    SPLIT: tl.constexpr,
    PAIR: tl.constexpr,
    SHARED_SUMS: tl.constexpr,
):
    """`key_linear_share` for BLOCK_N key rows of one head, stored in fp32 DK_LIN, DV_LIN
    (contiguous (B*H, N, D)) where the dk/dv kernel picks it up. Grid: (cdiv(N, BLOCK_N), B * H).
    SHARED_SUMS: as in `sla_bwd_dkdv_kernel`.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    k_block = bh * tl.cdiv(N, LUT_BLOCK_K) + (pid_n * BLOCK_N) // LUT_BLOCK_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < N
    k = load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, offs_d, col_ok, D)
    v = load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, offs_d, col_ok, D)
    dk, dv = key_linear_share(
        k, v, col_ok, DHBLK, DHBLK_LO, DZBLK, sums_index(k_block, bh, SHARED_SUMS), offs_d,
        sm_scale, D, FEATURE, DOT_PREC, SPLIT, PAIR,
    )  # fmt: skip
    lin = (bh * N + offs_n)[:, None] * D + offs_d[None, :]
    tl.store(DK_LIN + lin, dk, mask=rows_mask(col_ok[:, None], offs_d, D))
    tl.store(DV_LIN + lin, dv, mask=rows_mask(col_ok[:, None], offs_d, D))


@triton.jit(do_not_specialize=["N"])
def sla_bwd_preprocess_kernel(
    DO,
    O_S,
    O_L,
    W,
    DELTA_S,
    DO_L,
    DW_PART,
    DB_PART,
    H,
    N,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    LINEAR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    W_PREC: tl.constexpr,
    PAIR: tl.constexpr,
):
    """One pass over dO before the main backward kernels, per ROWS rows of one head
    (grid: cdiv(N, ROWS), B*H; all row buffers contiguous (B*H, N, ...)):

    Delta_s = rowsum(dO o O_s); with the linear branch dO_l = dO W (stored in dO's dtype) and
    this chunk's share of dW = dO^T O_l; db's share = sum dO. (Delta_l comes from the dq kernel.)
    The caller sums the shares, so the result does not depend on scheduling. W_PREC: the
    precision of dW, a sum over all B*H*N rows: "tf32x3" for half inputs, since plain tf32
    would add an error of the size of the inputs' own rounding. PAIR (bf16 activations): W and
    O_l as pairs of bf16 values, which hold them to 2^-16 (far below dO's own bf16 rounding),
    in two bf16 products each with the bf16 dO instead of tf32 / tf32x3 ones (faster).
    """
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    dw = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    if LINEAR:
        w = load_tile(W + offs_d[:, None] * D + offs_d[None, :], offs_d, offs_d, D, BLOCK_D)
        if PAIR:
            w_hi, w_lo = bf16_pair(w)
            w_hi, w_lo = w_hi.to(DO.dtype.element_ty), w_lo.to(DO.dtype.element_ty)
        elif DOT_PREC == "tf32":
            w = round_tf32(w)
    start = chunk * ROWS
    for r0 in range(start, tl.minimum(start + ROWS, N), BLOCK_M):
        offs_m = r0 + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        rows = bh * N + offs_m
        ptrs = rows[:, None] * D + offs_d[None, :]
        ok = rows_mask(row_ok[:, None], offs_d, D)
        do = tl.load(DO + ptrs, mask=ok, other=0.0)
        o_s = tl.load(O_S + ptrs, mask=ok, other=0.0)
        do32 = do.to(tl.float32)
        tl.store(DELTA_S + rows, tl.sum(do32 * o_s.to(tl.float32), 1), mask=row_ok)
        if HAS_BIAS:
            db += tl.sum(do32, 0)
        if LINEAR:
            # proj(o_l) = o_l W^T, W (out, in): dO_l = dO W, dW = dO^T O_l.
            o_l = tl.load(O_L + ptrs, mask=ok, other=0.0)
            if PAIR:
                do_l = tl.dot(do, w_hi, input_precision=DOT_PREC)
                do_l = tl.dot(do, w_lo, do_l, input_precision=DOT_PREC)
                o_hi, o_lo = bf16_pair(o_l)
                dw = tl.dot(tl.trans(do), o_hi.to(do.dtype), dw, input_precision=DOT_PREC)
                dw = tl.dot(tl.trans(do), o_lo.to(do.dtype), dw, input_precision=DOT_PREC)
            else:
                do_l = tl.dot(do32, w, input_precision=DOT_PREC)
                dw = tl.dot(tl.trans(do32), o_l, dw, input_precision=W_PREC)
            tl.store(DO_L + ptrs, do_l.to(DO_L.dtype.element_ty), mask=ok)
    part = bh * tl.num_programs(0) + chunk
    if LINEAR:
        dw_ptrs = DW_PART + part * D * D + offs_d[:, None] * D + offs_d[None, :]
        store_tile(dw_ptrs, dw, offs_d, offs_d, D, BLOCK_D)
    if HAS_BIAS:
        store_vector(DB_PART + part * D + offs_d, db, offs_d, D, BLOCK_D)
