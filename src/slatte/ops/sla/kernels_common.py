"""Triton helpers shared by the SLA forward and backward kernels: the feature maps and the
per-(head, row-chunk) outer-product sums that pre-aggregate the linear branch."""

from __future__ import annotations

import triton
import triton.language as tl

# FEATURE constexpr codes (the order of config.FEATURE_MAPS).
FEATURE_CODES = {"softmax": 0, "elu": 1, "relu": 2}


@triton.jit
def feature_map(x, FEATURE: tl.constexpr):
    """phi of an fp32 tile, row-wise: 0 softmax over the last axis, 1 elu + 1, 2 relu."""
    if FEATURE == 0:
        e = tl.exp(x - tl.max(x, 1)[:, None])
        y = e / tl.sum(e, 1)[:, None]
    elif FEATURE == 1:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        y = tl.maximum(x, 0.0)
    return y


@triton.jit
def feature_map_grad(x, y, dy, FEATURE: tl.constexpr):
    """d(loss)/dx from x, y = phi(x) and dy = d(loss)/dy, all fp32 tiles."""
    if FEATURE == 0:
        dx = y * (dy - tl.sum(dy * y, 1)[:, None])
    elif FEATURE == 1:
        dx = tl.where(x > 0, dy, dy * y)
    else:
        dx = tl.where(x > 0, dy, 0.0)
    return dx


@triton.jit(do_not_specialize=["N"])
def block_outer_kernel(
    X,
    Y,
    DEN,
    C,
    HBLK,
    ZBLK,
    stride_xb,
    stride_xh,
    stride_xn,
    stride_yb,
    stride_yh,
    stride_yn,
    H,
    N,
    D: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    FEATURE: tl.constexpr,
    HAS_DEN: tl.constexpr,
    HAS_C: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Per block of ROWS rows of one head (grid: cdiv(N, ROWS), B*H):

    HBLK[bh, blk] = sum_r u_r^T y_r (D x D, stored in HBLK's dtype), ZBLK[bh, blk] = sum_r c_r u_r
    (D, fp32), u_r = phi(x_r) / den_r. Forward: x = k, y = v, den = c = 1 gives each key block's
    h_j = phi(K_j)^T V_j and z_j. Backward: x = q, y = dO_l, den = the forward's denominator,
    c = -Delta_l gives each query block's dH_i and dZ_i.
    """
    blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    x_base = X + b * stride_xb + h * stride_xh
    y_base = Y + b * stride_yb + h * stride_yh
    acc_h = tl.zeros([D, D], dtype=tl.float32)
    acc_z = tl.zeros([D], dtype=tl.float32)
    for r0 in tl.static_range(0, ROWS, BLOCK_R):
        rows = blk * ROWS + r0 + offs_r
        row_ok = rows < N
        x = tl.load(
            x_base + rows[:, None] * stride_xn + offs_d[None, :], mask=row_ok[:, None], other=0.0
        )
        u = tl.where(row_ok[:, None], feature_map(x.to(tl.float32), FEATURE), 0.0)
        # Rounded as the activations are, so that both sums (and the forward's phi(q)) see the
        # same phi: with a small denominator (relu) a mismatch between them is amplified.
        u = u.to(X.dtype.element_ty).to(tl.float32)
        if HAS_DEN:
            den = tl.load(DEN + bh * N + rows, mask=row_ok, other=1.0)
            u = u / den[:, None]
        y = tl.load(
            y_base + rows[:, None] * stride_yn + offs_d[None, :], mask=row_ok[:, None], other=0.0
        )
        # Operands in the activations' dtype (as the tensor cores take them), fp32 accumulation.
        acc_h = tl.dot(tl.trans(u.to(y.dtype)), y, acc_h, input_precision=DOT_PREC)
        if HAS_C:
            c = tl.load(C + bh * N + rows, mask=row_ok, other=0.0)
            acc_z += tl.sum(u * c[:, None], 0)
        else:
            acc_z += tl.sum(u, 0)
    part = bh * tl.num_programs(0) + blk
    tl.store(
        HBLK + part * D * D + offs_d[:, None] * D + offs_d[None, :],
        acc_h.to(HBLK.dtype.element_ty),
    )
    tl.store(ZBLK + part * D + offs_d, acc_z)


@triton.jit(do_not_specialize=["R", "C"])
def mask_gemm_kernel(
    MAP,
    X,
    OUT,
    stride_mbh,
    stride_mr,
    stride_mc,
    R,
    C,
    COLS: tl.constexpr,
    SCOPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """OUT[bh, r] = sum over c of S(MAP[bh, r, c]) X[bh, c] (fp32), S the linear branch's
    selection from the block map codes: SCOPE 0 "marginal" (code 0), 1 "noncritical" (codes 0,
    -1), 2 "all". Grid: (cdiv(R, BLOCK_R), COLS / BLOCK_COLS, B*H).

    Forward: rows = query blocks, c = key blocks, X = h_j flattened (D*D): the H_i of every query
    block as one dense GEMM with a 0/1 matrix read straight from the map. Backward: the same with
    the map transposed (through strides) sums dH_i into each key block's dH^(j). X holds per-block sums in
    the activations' dtype (exact 0/1 weights, fp32 accumulation).
    """
    pid_r = tl.program_id(0)
    pid_col = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    offs_col = pid_col * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    acc = tl.zeros([BLOCK_R, BLOCK_COLS], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols_c = c0 + offs_c
        ok = (offs_r[:, None] < R) & (cols_c[None, :] < C)
        code = tl.load(
            MAP + bh * stride_mbh + offs_r[:, None] * stride_mr + cols_c[None, :] * stride_mc,
            mask=ok,
            other=1,
        )
        if SCOPE == 0:
            sel = code == 0
        elif SCOPE == 1:
            sel = code != 1
        else:
            sel = ok
        x = tl.load(
            X + (bh * C + cols_c[:, None]) * COLS + offs_col[None, :],
            mask=cols_c[:, None] < C,
            other=0.0,
        )
        acc = tl.dot(sel.to(x.dtype), x, acc, input_precision=DOT_PREC)
    tl.store(
        OUT + (bh * R + offs_r[:, None]) * COLS + offs_col[None, :], acc, mask=offs_r[:, None] < R
    )
