"""Triton helpers shared by the SLA forward and backward kernels: the feature maps and the
per-(head, row-chunk) outer-product sums that pre-aggregate the linear branch.

Head dims. The attention kernels take the head dim D and the width BLOCK_D of their feature
tiles (`tiles.feature_tile`: a power of two, as `tl.arange` needs, and at least 16, as `tl.dot`
needs). Where D < BLOCK_D the lanes past D are padding that lives only in registers: loads give
them 0 (masked pointer loads; TMA copies fill what lies outside the tensor with 0), stores skip
them, and the softmax feature map leaves them out of its sum, so they add exactly nothing to any
real lane (see `feature_map` for the elementwise maps). No tensor is padded in memory. Where
D == BLOCK_D (every power-of-two D from 16) the masks are left out at compile time (constexpr
tests), so those head dims compile to the same code as before padding existed."""

from __future__ import annotations

import triton
import triton.language as tl

# FEATURE constexpr codes (the order of config.FEATURE_MAPS).
FEATURE_CODES = {"softmax": 0, "elu": 1, "relu": 2}


@triton.jit
def feature_map(x, FEATURE: tl.constexpr, D: tl.constexpr):
    """phi of an fp32 tile, row-wise: 0 softmax over the last axis, 1 elu + 1, 2 relu.
    Lanes of the last axis past D (padding, loaded as 0) are left out of the softmax's sum
    (exp(0) there would take a share of every real lane) and give 0. The elementwise maps need
    no mask: a padding lane of phi (elu: exp(0) = 1) only ever multiplies padding lanes of
    H, Z, dH or dZ, which are never stored and load as 0."""
    if FEATURE == 0:
        if x.shape[1] != D:
            x = tl.where(tl.arange(0, x.shape[1])[None, :] < D, x, float("-inf"))
        e = tl.exp(x - tl.max(x, 1)[:, None])
        y = e / tl.sum(e, 1)[:, None]
    elif FEATURE == 1:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        y = tl.maximum(x, 0.0)
    return y


@triton.jit
def feature_map_grad(x, y, dy, FEATURE: tl.constexpr):
    """d(loss)/dx from x, y = phi(x) and dy = d(loss)/dy, all fp32 tiles (padding lanes, where
    dy is 0, give 0)."""
    if FEATURE == 0:
        dx = y * (dy - tl.sum(dy * y, 1)[:, None])
    elif FEATURE == 1:
        dx = tl.where(x > 0, dy, dy * y)
    else:
        dx = tl.where(x > 0, dy, 0.0)
    return dx


@triton.jit
def rows_mask(ok, offs_d, D: tl.constexpr):
    """The mask of a (len(ok), len(offs_d)) tile from `ok` (a column: the rows to touch): also
    lanes below D, unless D is a multiple of the tile's width (then no tile has lanes past D and
    the mask is `ok` itself)."""
    width: tl.constexpr = offs_d.shape[0]
    # (D % width, but the interpreter's D is an int and width a constexpr, which has no __rmod__)
    whole: tl.constexpr = D // width * width == D
    mask = ok if whole else ok & (offs_d[None, :] < D)
    return mask


@triton.jit
def load_rows(base, rows, stride_n, offs_d, ok, D: tl.constexpr):
    """The (len(rows), len(offs_d)) tile of rows `rows` at `base` (row stride `stride_n`,
    feature dim contiguous); rows where `ok` is false and lanes past D read as 0."""
    return tl.load(
        base + rows[:, None] * stride_n + offs_d[None, :],
        mask=rows_mask(ok[:, None], offs_d, D),
        other=0.0,
    )


@triton.jit
def store_rows(base, rows, stride_n, offs_d, ok, x, D: tl.constexpr):
    """`load_rows`'s counterpart: x stored in base's dtype, rows not `ok` and lanes past D
    left alone."""
    tl.store(
        base + rows[:, None] * stride_n + offs_d[None, :],
        x.to(base.dtype.element_ty),
        mask=rows_mask(ok[:, None], offs_d, D),
    )


@triton.jit
def load_tile(ptrs, offs_r, offs_c, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """`tl.load(ptrs)` of the tile at rows offs_r, columns offs_c of a D x D matrix, 0 past D
    (feature tiles BLOCK_D wide)."""
    if D == BLOCK_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(offs_r[:, None] < D) & (offs_c[None, :] < D), other=0.0)
    return x


@triton.jit
def store_tile(ptrs, x, offs_r, offs_c, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """`load_tile`'s counterpart: padding lanes left alone."""
    if D == BLOCK_D:
        tl.store(ptrs, x)
    else:
        tl.store(ptrs, x, mask=(offs_r[:, None] < D) & (offs_c[None, :] < D))


@triton.jit
def load_vector(ptrs, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """`tl.load(ptrs)` of a D-vector on a BLOCK_D-wide tile (lanes offs_d), 0 past D."""
    x = tl.load(ptrs) if D == BLOCK_D else tl.load(ptrs, mask=offs_d < D, other=0.0)
    return x


@triton.jit
def store_vector(ptrs, x, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """`load_vector`'s counterpart."""
    if D == BLOCK_D:
        tl.store(ptrs, x)
    else:
        tl.store(ptrs, x, mask=offs_d < D)


@triton.jit
def load_block(src, base, b, h, first, rows, stride_n, offs_d, ok, D: tl.constexpr,
               TMA: tl.constexpr):  # fmt: skip
    """Rows [first, first + len(rows)) of head (b, h): with TMA, one bulk copy through the
    tensor descriptor `src` over (B, H, N, D) (rows past N and lanes past D read as 0: the
    copy engine fills what lies outside the tensor); else `load_rows` from `base`, that head's
    first row."""
    if TMA:
        tile = src.load([b.to(tl.int32), h.to(tl.int32), first, 0])
        return tl.reshape(tile, (tile.shape[2], tile.shape[3]))
    return load_rows(base, rows, stride_n, offs_d, ok, D)


@triton.jit
def sums_index(block, bh, SHARED_SUMS: tl.constexpr):
    """Where the linear sums (H, Z or dH, dZ) of `block` (its index over all heads) lie: at that
    index, or with SHARED_SUMS (linear_scope "all": every block's S is every block, so all of a
    head's blocks have the same sums) at the head's one entry `bh`."""
    if SHARED_SUMS:
        return bh
    return block


@triton.jit
def round_tf32(x):
    """x (fp32) rounded to the nearest tf32 value (10 mantissa bits), as an fp32 tile. The tensor
    cores take an fp32 operand by dropping its low bits (truncation, a one-sided error that adds
    up over a sum), so an fp32 operand that is not already exact in tf32 is rounded with this."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def round_bf16(x):
    """x (fp32) rounded to the nearest bf16 value (7 mantissa bits), as an fp32 tile."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x8000) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def bf16_pair(x):
    """x (fp32) as (hi, lo), two fp32 tiles holding bf16 values, hi + lo within 2^-17 of x:
    operands that bf16 tensor cores multiply exactly, or sums stored in half the bytes of two
    fp32 ones. Rounded in fp32 bits, so the pair is the same whether it is then stored as bf16
    (on the GPU) or as fp32 (under the interpreter, whose bf16 arithmetic is unreliable)."""
    hi = round_bf16(x)
    return hi, round_bf16(x - hi)


@triton.jit
def dot_exact_b(a, b, acc, SPLIT: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + a @ b for fp32 tiles where `a` holds values exact in tf32 (activations) and `b` is
    a full-precision fp32 sum (H_i, dH^(j)). SPLIT: b = hi + lo with hi exact in tf32, two
    products, exact to ~2^-21 of b (lo's truncation by the tensor cores is 2^-11 of a term
    2^-11 of b's size). The linear branch's gradients cancel two terms built from b (dO_l H^T
    against Delta_l Z); one rounding of b to tf32 leaves an error of b's size where the result
    is ~0 (one key row in S(i)), so b may not be rounded there."""
    if SPLIT:
        hi = round_tf32(b)
        acc = tl.dot(a, hi, acc, input_precision="tf32")
        acc = tl.dot(a, b - hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def add_linear_branch(
    out, q, sums, rows, row_ok, offs_d, W, HBLK, HBLK_LO, ZBLK, O_L, eps,
    D: tl.constexpr, BLOCK_D: tl.constexpr, FEATURE: tl.constexpr, H_PAIR: tl.constexpr,
    STORE_AUX: tl.constexpr, DOT_PREC: tl.constexpr, LIN_CHUNK: tl.constexpr,
):  # fmt: skip
    """The forward's linear epilogue on one tile of query rows: (out + O_l W^T, den) with
    O_l = phi(q) H_i / den, den = phi(q) Z_i + eps; H_i (D x D) and Z_i (D) are the sums at
    index `sums` of HBLK, ZBLK (`sums_index`). H_PAIR (bf16, training): H_i is the bf16 pair
    HBLK + HBLK_LO of the backward's exact sum. STORE_AUX: O_l is stored into O_L at `rows` of
    the contiguous (B*H, N, D) saved state. LIN_CHUNK (a power of two up to BLOCK_D): columns
    of O_l per step."""
    z_i = load_vector(ZBLK + sums * D + offs_d, offs_d, D, BLOCK_D)
    fq = feature_map(q.to(tl.float32), FEATURE, D).to(q.dtype)
    den = tl.sum(fq.to(tl.float32) * z_i[None, :], 1) + eps
    # O_l and its projection LIN_CHUNK columns of O_l at a time: with all D = 128 columns of
    # H_i, its lo half and W at once, the training epilogue spills (far less in chunks).
    # Chunks that would hold only padding lanes are skipped.
    for c in tl.static_range((D + LIN_CHUNK - 1) // LIN_CHUNK):
        offs_c = c * LIN_CHUNK + tl.arange(0, LIN_CHUNK)
        offs_h = sums * D * D + offs_d[:, None] * D + offs_c[None, :]
        h_i = load_tile(HBLK + offs_h, offs_d, offs_c, D, BLOCK_D)
        # W is (out, in): proj(o_l) = o_l W^T; these are the rows offs_c of W^T.
        w_t = load_tile(W + offs_d[None, :] * D + offs_c[:, None], offs_c, offs_d, D, BLOCK_D)
        if HBLK.dtype.element_ty == tl.bfloat16:
            # bf16 activations: W rounded to bf16, H_i too (or an exact pair, H_PAIR), the
            # products on bf16 tensor cores (fp32 operands here made the compiler spill).
            o_l = tl.dot(fq, h_i)
            if H_PAIR:
                o_l = tl.dot(fq, load_tile(HBLK_LO + offs_h, offs_d, offs_c, D, BLOCK_D), o_l)
            o_l = o_l / den[:, None]
            out = tl.dot(o_l.to(tl.bfloat16), w_t.to(tl.bfloat16), out)
        else:
            if H_PAIR:  # (under the interpreter the pair's halves are fp32 tensors)
                h_i += load_tile(HBLK_LO + offs_h, offs_d, offs_c, D, BLOCK_D)
            if DOT_PREC == "tf32":
                # fp32 operands rounded to nearest, not truncated by the tensor cores (a
                # one-sided error that adds up over the D terms of a row; see `round_tf32`).
                h_i = round_tf32(h_i)
            o_l = tl.dot(fq.to(tl.float32), h_i, input_precision=DOT_PREC) / den[:, None]
            if DOT_PREC == "tf32":
                out = tl.dot(round_tf32(o_l), round_tf32(w_t), out, input_precision=DOT_PREC)
            else:
                out = tl.dot(o_l, w_t, out, input_precision=DOT_PREC)
        if STORE_AUX:
            store_rows(O_L, rows, D, offs_c, row_ok, o_l, D)
    return out, den


@triton.jit
def _outer_rows(
    acc_h, acc_z, rows, x_base, y_base, DEN, C, bh, N, stride_xn, stride_yn, offs_d,
    D: tl.constexpr, FEATURE: tl.constexpr, HAS_DEN: tl.constexpr, HAS_C: tl.constexpr,
    DOT_PREC: tl.constexpr, U_PAIR: tl.constexpr,
):  # fmt: skip
    """`block_outer_kernel`'s step: (acc_h, acc_z) plus the sums of the rows `rows` (those past
    N add nothing)."""
    row_ok = rows < N
    x = load_rows(x_base, rows, stride_xn, offs_d, row_ok, D)
    u = tl.where(row_ok[:, None], feature_map(x.to(tl.float32), FEATURE, D), 0.0)
    # Rounded as the activations are, so that both sums (and the forward's phi(q)) see the
    # same phi: with a small denominator (relu) a mismatch between them is amplified.
    u = u.to(x_base.dtype.element_ty).to(tl.float32)
    y = load_rows(y_base, rows, stride_yn, offs_d, row_ok, D)
    if HAS_DEN:
        den = tl.load(DEN + bh * N + rows, mask=row_ok, other=1.0)
        # u = phi / den is no activation value: rounded once to what the tensor cores take,
        # and the same u goes into the z sum, so that dH and dZ cancel exactly where they
        # must (d phi(k) = v dH^T + dZ). fp32 keeps 1 / den in range.
        u = u / den[:, None]
        if U_PAIR:
            # Two bf16 halves hold u to 2^-16 (tf32: 2^-11) and run at twice tf32's rate.
            u_hi, u_lo = bf16_pair(u)
            acc_h = tl.dot(tl.trans(u_hi.to(y.dtype)), y, acc_h, input_precision=DOT_PREC)
            acc_h = tl.dot(tl.trans(u_lo.to(y.dtype)), y, acc_h, input_precision=DOT_PREC)
            u = u_hi + u_lo
        else:
            if DOT_PREC == "tf32":
                u = round_tf32(u)
            acc_h = tl.dot(tl.trans(u), y.to(tl.float32), acc_h, input_precision=DOT_PREC)
    else:
        # Operands in the activations' dtype (exact products), fp32 accumulation.
        acc_h = tl.dot(tl.trans(u.to(y.dtype)), y, acc_h, input_precision=DOT_PREC)
    if HAS_C:
        c = tl.load(C + bh * N + rows, mask=row_ok, other=0.0)
        acc_z += tl.sum(u * c[:, None], 0)
    else:
        acc_z += tl.sum(u, 0)
    return acc_h, acc_z


@triton.jit
def _block_sums(
    blk, bh, X, Y, DEN, C, stride_xb, stride_xh, stride_xn, stride_yb, stride_yh, stride_yn, H, N,
    D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    FEATURE: tl.constexpr, HAS_DEN: tl.constexpr, HAS_C: tl.constexpr, DOT_PREC: tl.constexpr,
    U_PAIR: tl.constexpr, LOOP: tl.constexpr,
):  # fmt: skip
    """`block_outer_kernel`'s work item: the fp32 sums (acc_h, acc_z) of block `blk` of head
    `bh`."""
    b = bh // H
    h = bh % H
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    x_base = X + b * stride_xb + h * stride_xh
    y_base = Y + b * stride_yb + h * stride_yh
    acc_h = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    acc_z = tl.zeros([BLOCK_D], dtype=tl.float32)
    if not LOOP:
        for r0 in tl.static_range(0, ROWS, BLOCK_R):
            acc_h, acc_z = _outer_rows(
                acc_h, acc_z, blk * ROWS + r0 + offs_r, x_base, y_base, DEN, C, bh, N,
                stride_xn, stride_yn, offs_d, D, FEATURE, HAS_DEN, HAS_C, DOT_PREC, U_PAIR,
            )  # fmt: skip
    else:  # (steps past N skipped)
        start = blk * ROWS
        for r0 in range(start, tl.minimum(start + ROWS, N), BLOCK_R):
            acc_h, acc_z = _outer_rows(
                acc_h, acc_z, r0 + offs_r, x_base, y_base, DEN, C, bh, N,
                stride_xn, stride_yn, offs_d, D, FEATURE, HAS_DEN, HAS_C, DOT_PREC, U_PAIR,
            )  # fmt: skip
    return acc_h, acc_z


@triton.jit
def _store_block_sums(
    part, acc_h, acc_z, HBLK, HBLK_LO, ZBLK, D: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """`block_outer_kernel`'s stores of one work item's sums at index `part` (over all heads)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_h = part * D * D + offs_d[:, None] * D + offs_d[None, :]
    if SPLIT:
        hi, lo = bf16_pair(acc_h)
        store_tile(HBLK + offs_h, hi.to(HBLK.dtype.element_ty), offs_d, offs_d, D, BLOCK_D)
        store_tile(HBLK_LO + offs_h, lo.to(HBLK.dtype.element_ty), offs_d, offs_d, D, BLOCK_D)
    else:
        store_tile(HBLK + offs_h, acc_h.to(HBLK.dtype.element_ty), offs_d, offs_d, D, BLOCK_D)
    store_vector(ZBLK + part * D + offs_d, acc_z, offs_d, D, BLOCK_D)


@triton.jit(do_not_specialize=["N"])
def block_outer_kernel(
    X,
    Y,
    DEN,
    C,
    HBLK,
    HBLK_LO,
    ZBLK,
    stride_xb,
    stride_xh,
    stride_xn,
    stride_yb,
    stride_yh,
    stride_yn,
    H,
    N,
    BH,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    FEATURE: tl.constexpr,
    HAS_DEN: tl.constexpr,
    HAS_C: tl.constexpr,
    DOT_PREC: tl.constexpr,
    SPLIT: tl.constexpr,
    U_PAIR: tl.constexpr,
    LOOP: tl.constexpr,
    PERSIST: tl.constexpr,
):
    """Per block of ROWS rows of one head (grid: cdiv(N, ROWS), B*H):

    HBLK[bh, blk] = sum_r u_r^T y_r (D x D, stored in HBLK's dtype), ZBLK[bh, blk] = sum_r c_r u_r
    (D, fp32), u_r = phi(x_r) / den_r. SPLIT (the backward with half inputs, whose gradients
    need the sums to ~fp32 accuracy): the fp32 sum is stored as a pair of bf16 values,
    HBLK = hi and HBLK_LO = lo, hi + lo within 2^-17 of it, so that `mask_gemm_kernel` sums it
    with two bf16 products (cheaper than tf32 ones, and exact) instead of fp32 operands.
    U_PAIR (with HAS_DEN, bf16 activations): u = phi / den as a pair of bf16 values, multiplied
    with the bf16 y in two bf16 products (exact in fp32) instead of one tf32 product.
    Forward: x = k, y = v, den = c = 1 gives each key block's h_j = phi(K_j)^T V_j and z_j.
    Backward: x = q, y = dO_l, den = the forward's denominator, c = -Delta_l gives each query
    block's dH_i and dZ_i.
    LOOP: ROWS is a long chunk of a head (thousands of rows, whose partial sums the caller adds
    up into one shared H, Z per head), gone through in a run-time loop; else a map block, its
    few BLOCK_R steps unrolled.
    PERSIST (grid: (programs,), `launch.persistent_grid`): program p takes the blocks p,
    p + programs, ... of the cdiv(N, ROWS) * BH blocks, head-major, in a loop, so that the
    compiler's software pipeline loads the next block's rows while this one's are summed (BH:
    B*H, read only here).
    """
    if PERSIST:
        n_blocks = tl.cdiv(N, ROWS)
        for item in tl.range(tl.program_id(0), n_blocks * BH, tl.num_programs(0)):
            blk = item % n_blocks
            bh = (item // n_blocks).to(tl.int64)
            acc_h, acc_z = _block_sums(
                blk, bh, X, Y, DEN, C, stride_xb, stride_xh, stride_xn, stride_yb, stride_yh,
                stride_yn, H, N, D, BLOCK_D, ROWS, BLOCK_R, FEATURE, HAS_DEN, HAS_C, DOT_PREC,
                U_PAIR, LOOP,
            )  # fmt: skip
            _store_block_sums(
                bh * n_blocks + blk, acc_h, acc_z, HBLK, HBLK_LO, ZBLK, D, BLOCK_D, SPLIT
            )
    else:
        blk = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        acc_h, acc_z = _block_sums(
            blk, bh, X, Y, DEN, C, stride_xb, stride_xh, stride_xn, stride_yb, stride_yh,
            stride_yn, H, N, D, BLOCK_D, ROWS, BLOCK_R, FEATURE, HAS_DEN, HAS_C, DOT_PREC,
            U_PAIR, LOOP,
        )  # fmt: skip
        _store_block_sums(
            bh * tl.num_programs(0) + blk, acc_h, acc_z, HBLK, HBLK_LO, ZBLK, D, BLOCK_D, SPLIT
        )


@triton.jit
def _load_x_tile(
    X, X_TMA, bh, c0, cols_c, pid_col, offs_col, C, COLS: tl.constexpr, TMA: tl.constexpr
):
    """The (len(cols_c), len(offs_col)) tile of X (B*H, C, COLS) at rows c0.. of head bh, rows
    past C and columns past COLS as 0: one bulk copy through the descriptor X_TMA with TMA,
    else pointer loads."""
    if TMA:
        tile = X_TMA.load([bh.to(tl.int32), c0, pid_col * offs_col.shape[0]])
        return tl.reshape(tile, (tile.shape[1], tile.shape[2]))
    return tl.load(
        X + (bh * C + cols_c[:, None]) * COLS + offs_col[None, :],
        mask=rows_mask(cols_c[:, None] < C, offs_col, COLS),
        other=0.0,
    )


@triton.jit(do_not_specialize=["R", "C"])
def mask_gemm_kernel(
    MAP,
    X,
    X_LO,
    X_TMA,
    X_LO_TMA,
    OUT,
    OUT_LO,
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
    SPLIT: tl.constexpr,
    PAIR_OUT: tl.constexpr,
    TMA: tl.constexpr,
):
    """OUT[bh, r] = sum over c of S(MAP[bh, r, c]) X[bh, c] (summed in fp32, stored in OUT's
    dtype; PAIR_OUT: as a bf16 pair OUT + OUT_LO, within 2^-17 of the fp32 sum, for products on
    bf16 tensor cores), S the linear branch's selection from the block map codes: SCOPE 0
    "marginal" (code 0), 1 "noncritical" (codes 0, -1). (Scope "all" needs no map: its sums
    are shared, `launchers.shared_sums`.)
    Grid: (cdiv(R, BLOCK_R), cdiv(COLS, BLOCK_COLS), B*H); columns are masked only where
    BLOCK_COLS does not divide COLS (D x D sums of a head dim that is no power of two).

    Forward: rows = query blocks, c = key blocks, X = h_j flattened (D*D): the H_i of every query
    block as one dense GEMM with a 0/1 matrix read straight from the map. Backward: the same with
    the map transposed (through strides) sums dH_i into each key block's dH^(j). X holds per-block
    sums in the activations' dtype (exact 0/1 weights, fp32 accumulation); SPLIT: X + X_LO, a
    bf16 pair from `block_outer_kernel`, summed with two products of the same selection.
    X_TMA, X_LO_TMA: with TMA, tensor descriptors of X and X_LO (B*H, C, COLS) for
    (BLOCK_C, BLOCK_COLS) tiles; otherwise unused.
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
        sel = code == 0 if SCOPE == 0 else code != 1
        x = _load_x_tile(X, X_TMA, bh, c0, cols_c, pid_col, offs_col, C, COLS, TMA)
        w = sel.to(x.dtype)
        acc = tl.dot(w, x, acc, input_precision=DOT_PREC)
        if SPLIT:
            x_lo = _load_x_tile(X_LO, X_LO_TMA, bh, c0, cols_c, pid_col, offs_col, C, COLS, TMA)
            acc = tl.dot(w, x_lo, acc, input_precision=DOT_PREC)
    offs_out = (bh * R + offs_r[:, None]) * COLS + offs_col[None, :]
    if PAIR_OUT:
        hi, lo = bf16_pair(acc)
        out_ok = rows_mask(offs_r[:, None] < R, offs_col, COLS)
        tl.store(OUT + offs_out, hi.to(OUT.dtype.element_ty), mask=out_ok)
        tl.store(OUT_LO + offs_out, lo.to(OUT_LO.dtype.element_ty), mask=out_ok)
    else:
        out_ok = rows_mask(offs_r[:, None] < R, offs_col, COLS)
        tl.store(OUT + offs_out, acc.to(OUT.dtype.element_ty), mask=out_ok)
