"""Launchers of the Triton SLA kernels: the forward and backward that the registered op
(`ops/sla/op.py`) runs for the "triton" kernel family, with their buffers, dtypes and tiles.

Everything here works on (B, H, N, D) tensors that may be strided views (the bnhd layout); the
kernels read strides. Only the feature dim must be contiguous.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from ...triton_interpreter import triton_interpreting
from ..block_map import block_scores, classify, linear_mask, transpose_lists
from ..launch_policy import LaunchPolicy
from ..reference import LINEAR_EPS
from .kernels_backward import (
    sla_bwd_dkdv_kernel,
    sla_bwd_dq_kernel,
    sla_bwd_key_linear_kernel,
    sla_bwd_preprocess_kernel,
)
from .kernels_common import FEATURE_CODES, block_outer_kernel, mask_gemm_kernel
from .kernels_epilogue import sla_epilogue_kernel
from .kernels_forward import LOG2E, sla_fwd_kernel
from .launch import launch, persistent_grid, sm_count
from .tiles import MaskTile, feature_tile, mask_gemm_tile, tiles

# Rows of one program of the backward's preprocessing: few partial dW sums to add up, enough
# programs to fill the GPU.
PREPROCESS_ROWS = 1024
# The mask GEMM's scopes (scope "all" takes shared sums instead).
SCOPE_CODES = {"marginal": 0, "noncritical": 1}
# Shared sums (`shared_sums`): rows per program of a head's sums, halved from the most until the
# B*H heads take SHARED_SUM_PROGRAMS_PER_SM programs per SM, never below the least; powers of
# two, so that few variants compile.
SHARED_SUM_ROWS = (256, 4096)
SHARED_SUM_PROGRAMS_PER_SM = 2
# The forward keeps the sparse branch's log-sum-exp in log2 units (its softmax runs on exp2 of
# the scores times scale * log2(e)); this factor turns it into the natural log.
LSE_TO_NATURAL = math.log(2.0)


class SparseBranch(NamedTuple):
    """The sparse branch (spec section 2) run by another kernel family; these launchers then
    run the block map and the linear branch around it (the forward's `sla_epilogue_kernel`,
    `SPARSE_DONE` in the backward's kernels).

    `forward(q, k, v, crit_lut, bmap, block_q, block_k, scale, o_s, lse)` writes O_s into o_s
    (B, H, N, D, contiguous) and its log-sum-exp, in the family's own units, into lse (B, H, N);
    `backward(do, q, k, v, o_s, lse, crit_lut, bmap, block_q, block_k, scale, dq, dk, dv)`
    writes the sparse branch's gradients into dq, dk, dv (shaped like q, k, v).
    """

    forward: Callable[..., None]
    backward: Callable[..., None]


def has_linear(nk: int, n_crit: int, n_negl: int, scope: str, has_proj: bool) -> bool:
    """Whether any query block has a linear branch (every row has |S(i)| blocks alike)."""
    n_lin = {"marginal": nk - n_crit - n_negl, "noncritical": nk - n_crit, "all": nk}[scope]
    return has_proj and n_lin > 0


def shared_sums(scope: str) -> bool:
    """Whether the linear sums (H, Z; the backward's dH, dZ) are one per head, shared by all of
    its blocks (shape (B*H, 1, ...)), instead of one per block: with scope "all" every block's S
    is every block, so they are the same for all blocks."""
    return scope == "all"


@functools.cache
def _has_tma(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def _use_tma(policy: LaunchPolicy, *xs: torch.Tensor) -> bool:
    """Whether kernels read tiles of the tensors `xs` (last dim contiguous) through TMA tensor
    descriptors: where the policy allows it, the GPU has the copy engine (Hopper and later; also
    under Triton's interpreter) and every tensor's strides suit it (16-byte multiples). With
    their key blocks as bulk copies the forward and dq kernels take other tiles (`tiles`)."""
    on_device = triton_interpreting() or (xs[0].is_cuda and _has_tma(xs[0].device))
    if not policy.tma or not on_device:
        return False
    size = xs[0].element_size()
    for x in xs:
        aligned = x.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in x.stride()[:-1])
        if x.stride(-1) != 1 or not aligned or x.shape[-1] * size < 16:
            return False
    return True


def _descriptor(x: torch.Tensor, block: list[int]) -> TensorDescriptor:
    """A TMA descriptor of x (its own shape and strides) for tiles of shape `block`."""
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block)


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products; with half inputs the few fp32 x fp32 products (with
    # H_i, dH^(j), W) run in tf32 ("tf32x3" would be closer to fp32 but needs more shared
    # memory than an H100 has at D = 128).
    return "ieee" if dtype == torch.float32 else "tf32"


def _bh_strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _new(
    policy: LaunchPolicy, x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    if policy.poison_outputs:
        return torch.full(shape, float("nan"), dtype=dtype, device=x.device)
    return x.new_empty(shape, dtype=dtype)


def _new_like(policy: LaunchPolicy, x: torch.Tensor) -> torch.Tensor:
    # Keeps x's strides: outputs come back in the caller's layout (bhnd or bnhd).
    out = torch.empty_like(x)
    return out.fill_(float("nan")) if policy.poison_outputs else out


def empty_aux(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty(0, dtype=torch.float32)


def _block_sum_dtype(dtype: torch.dtype) -> torch.dtype:
    # Per-block D x D sums (over one block's rows, so no overflow risk) go through the tensor
    # cores in the activations' dtype; fp32 for bf16 under Triton's interpreter, whose bf16
    # arithmetic is unreliable.
    if dtype == torch.bfloat16 and triton_interpreting():
        return torch.float32
    return dtype


def _forward_sum_dtype(dtype: torch.dtype) -> torch.dtype:
    # H_i summed over S(i), as the forward multiplies it with phi(q): bf16 for bf16 activations
    # (bf16 tensor cores, half the bytes, rounded once like the reference's sums; bf16 has fp32's
    # range), else fp32 (an fp16 sum over up to N rows could overflow).
    return _block_sum_dtype(dtype) if dtype == torch.bfloat16 else torch.float32


def pair_dtype() -> torch.dtype:
    # The exact sums' (hi, lo) halves: bf16 values, stored as such on the GPU; as fp32 under
    # Triton's interpreter, whose bf16 arithmetic is unreliable (the values are the same).
    return torch.float32 if triton_interpreting() else torch.bfloat16


def bf16_pairs(dtype: torch.dtype) -> bool:
    # bf16 inputs: the backward's H_i and dH^(j) come as bf16 (hi, lo) pairs, so the linear
    # branch's gradient products run on bf16 tensor cores (faster than split tf32, same error
    # against fp64). fp16 activations cannot be multiplied with bf16 halves (tf32 split there);
    # nor can the interpreter's bf16 (see `pair_dtype`).
    return dtype == torch.bfloat16 and pair_dtype() == torch.bfloat16


def _block_outer(
    policy: LaunchPolicy,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: int,
    feature_map: str,
    exact: bool,
    den: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    pair: bool = False,
    partial: bool = False,
    persist: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per block of `rows` rows: (sum u^T y, its low half or None, sum c u) with
    u = phi(x) / den; see the kernel. `exact` (sums the backward uses): with half inputs the D x D
    sums come as a (hi, lo) pair of bf16 values; with fp32 inputs in fp32. Otherwise in the
    activations' dtype. `pair` (bf16 activations, `bf16_pairs`): u / den as a bf16 pair.
    `partial`: `rows` is a long chunk of a head whose sums the caller adds up: fp32, no pair.
    `persist`: (programs per SM, pipeline stages) of a persistent launch (PERSIST) instead of
    one program per block.

    At D > 64 the forward's sums take 64-row steps with 8 warps, the exact ones 32-row steps
    with 4 warps (the fastest on an H100 at D = 128)."""
    b, h, n, d = x.shape
    block_d = feature_tile(d)
    n_blocks = triton.cdiv(n, rows)
    split = exact and not partial and _dot_prec(x.dtype) == "tf32"
    exact_dtype = pair_dtype() if split else torch.float32
    hdtype = exact_dtype if exact or partial else _block_sum_dtype(x.dtype)
    hblk = _new(policy, x, (2 if split else 1, b * h, n_blocks, d, d), hdtype)
    zblk = _new(policy, x, (b * h, n_blocks, d), torch.float32)
    aux = empty_aux(x)
    if block_d >= 128:
        block_r, warps = (32, 4) if exact else (64, 8)
    else:
        block_r, warps = 64, 4
    grid, stages = (n_blocks, b * h), 3
    if persist is not None:
        per_sm, stages = persist
        grid = persistent_grid(n_blocks * b * h, x.device, per_sm)
    launch(
        block_outer_kernel, grid,
        x, y, den if den is not None else aux, c if c is not None else aux,
        hblk[0], hblk[1] if split else aux, zblk,
        *_bh_strides(x), *_bh_strides(y), h, n, b * h,
        D=d, BLOCK_D=block_d, ROWS=rows, BLOCK_R=min(rows, block_r),
        FEATURE=FEATURE_CODES[feature_map],
        HAS_DEN=den is not None, HAS_C=c is not None, DOT_PREC=_dot_prec(x.dtype), SPLIT=split,
        U_PAIR=pair and den is not None, LOOP=partial, PERSIST=persist is not None,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return hblk[0], hblk[1] if split else None, zblk


def _shared_sum_rows(n: int, heads: int, device: torch.device) -> int:
    """Rows per program of the shared sums (`SHARED_SUM_ROWS`, `SHARED_SUM_PROGRAMS_PER_SM`)."""
    least, rows = SHARED_SUM_ROWS
    programs = SHARED_SUM_PROGRAMS_PER_SM * sm_count(device)
    while rows > least and heads * triton.cdiv(n, rows) < programs:
        rows //= 2
    return rows


def _mask_gemm(
    policy: LaunchPolicy,
    bmap: torch.Tensor,
    x: torch.Tensor,
    x_lo: torch.Tensor | None,
    scope: str,
    transpose: bool,
    act_dtype: torch.dtype,
    out_dtype: torch.dtype = torch.float32,
    pair_out: bool = False,
    tile: MaskTile | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B*H, R, COLS): each row's sum of the x (+ x_lo) rows its S selects (see the kernel), in
    `out_dtype`, or with `pair_out` as a (hi, lo) pair of bf16 values (and None otherwise).

    Not transposed: rows are query blocks, x is per key block. Transposed: the other way round.
    `tile`: the inference forward's sum (`tiles.mask_gemm_tile`), which replaces the choice
    below; with its `cublas` and x already in `out_dtype`, one `torch.bmm` of the 0/1 selection
    (`block_map.linear_mask`, in x's dtype: exact) with x, accumulated in fp32 (fp32 sums at
    torch's matmul precision setting). The training forward's exact sums keep the kernel.
    """
    nq, nk = bmap.shape[-2:]
    bh, _, cols = x.shape
    split = x_lo is not None
    cublas = tile is not None and tile.cublas and x.dtype == out_dtype
    if cublas and not (transpose or split or pair_out):
        selected = linear_mask(bmap, scope).view(bh, nq, nk).to(x.dtype)
        return torch.bmm(selected, x), None
    r, c, stride_r, stride_c = (nk, nq, 1, nk) if transpose else (nq, nk, nk, 1)
    out = _new(policy, x, (bh, r, cols), pair_dtype() if pair_out else out_dtype)
    out_lo = _new(policy, x, (bh, r, cols), pair_dtype()) if pair_out else None
    # The forward's sum takes 256-wide column tiles on 8 warps, the backward's H sums (a split
    # pair) 128-row tiles, both with x through TMA where it applies. The backward's transposed
    # split sum keeps 64 x 128 tiles on 4 warps: 128-row tiles spill there, and 2 stages gave
    # NaN sums with fp16 inputs at 75,600 tokens. Column tiles are powers of two, at least 16
    # wide (`tl.dot`); where one does not divide the columns (D x D sums of a head dim that is no
    # power of two) the last is masked.
    width = feature_tile(cols)
    if transpose:
        block_r, block_cols, warps = 64, min(width, 128), 4
    elif tile is not None and not split:
        block_r, block_cols, warps = tile.rows, min(width, tile.cols), tile.warps
    else:
        block_r, block_cols, warps = 128 if split else 64, min(width, 256), 8
    x_lo = x if x_lo is None else x_lo  # (unused without SPLIT)
    tma = _use_tma(policy, x, x_lo)
    x_tiles, x_lo_tiles = x, x_lo
    if tma:
        x_tiles = _descriptor(x, [1, 64, block_cols])
        x_lo_tiles = _descriptor(x_lo, [1, 64, block_cols]) if split else x_tiles
    launch(
        mask_gemm_kernel, (triton.cdiv(r, block_r), triton.cdiv(cols, block_cols), bh),
        bmap, x, x_lo, x_tiles, x_lo_tiles, out, out_lo if pair_out else out, nq * nk,
        stride_r, stride_c, r, c,
        COLS=cols, SCOPE=SCOPE_CODES[scope], BLOCK_R=block_r, BLOCK_C=64, BLOCK_COLS=block_cols,
        DOT_PREC=_dot_prec(act_dtype), SPLIT=split, PAIR_OUT=pair_out, TMA=tma,
        num_warps=warps, num_stages=3,
    )  # fmt: skip
    return out, out_lo


def _linear_sums(
    policy: LaunchPolicy,
    x: torch.Tensor,
    y: torch.Tensor,
    bmap: torch.Tensor,
    rows: int,
    scope: str,
    transpose: bool,
    feature_map: str,
    exact: bool,
    den: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    pair_out: bool = False,
    persist: tuple[int, int] | None = None,
    mask_tile: MaskTile | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-block outer sums of x, y, then summed over S into the other side's blocks.

    Forward (x = k, y = v): H_i, Z_i of every query block. Backward (x = q, y = dO_l,
    transpose): dH^(j), dZ^(j) of every key block. Returns (B*H, blocks, D, D) (fp32 when
    `exact`, else `_forward_sum_dtype`; with `pair_out` its hi half), its lo half (`pair_out`;
    else None), and (B*H, blocks, D). With `shared_sums(scope)` blocks is 1: the head's sums
    over all rows, which every block shares.
    `exact`: H / dH to ~fp32 accuracy, as the backward's cancellations need (the inference
    forward's output is fine with sums rounded like the activations). `persist`: the per-block
    sums' persistent launch (`_block_outer`); the shared sums keep their chunks. `mask_tile`:
    the inference forward's D x D sums' tile in `_mask_gemm`.
    """
    b, h, n, d = x.shape
    out_dtype = torch.float32 if exact else _forward_sum_dtype(x.dtype)
    if shared_sums(scope):
        # No mask: each head's rows in a few long chunks, their fp32 partials added up here.
        chunk_rows = _shared_sum_rows(n, b * h, x.device)
        hpart, _, zpart = _block_outer(
            policy, x, y, chunk_rows, feature_map, exact, den, c, pair_out, partial=True
        )
        total = hpart.sum(1, keepdim=True)  # (B*H, 1, D, D), fp32
        zsum = zpart.sum(1, keepdim=True)
        if not pair_out:
            return total.to(out_dtype), None, zsum
        hi = total.to(torch.bfloat16)
        lo = (total - hi.float()).to(torch.bfloat16)
        return hi.to(pair_dtype()), lo.to(pair_dtype()), zsum
    hblk, hblk_lo, zblk = _block_outer(
        policy, x, y, rows, feature_map, exact, den, c, pair_out, persist=persist
    )
    flat = hblk.view(hblk.shape[0], -1, d * d)
    flat_lo = None if hblk_lo is None else hblk_lo.view(flat.shape)
    hsum, hsum_lo = _mask_gemm(
        policy, bmap, flat, flat_lo, scope, transpose, x.dtype, out_dtype, pair_out, mask_tile
    )
    # The D-wide z sums through the same kernel, in fp32 ("ieee" products with the 0/1
    # weights): one launch instead of the mask, its cast and a matmul (less host time).
    zsum, _ = _mask_gemm(policy, bmap, zblk, None, scope, transpose, torch.float32)
    return (
        hsum.view(hsum.shape[0], -1, d, d),
        None if hsum_lo is None else hsum_lo.view(hsum_lo.shape[0], -1, d, d),
        zsum,
    )


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    n_crit: int,
    n_negl: int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float,
    store_aux: bool,
    store_lse: bool,
    policy: LaunchPolicy,
    sparse_branch: SparseBranch | None = None,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]:  # fmt: skip
    """The op `slatte::sla_fwd` (`op.py`) on the Triton kernels; see its docstring.
    `sparse_branch`: another family's sparse branch, run before the kernels add the linear one.

    With `store_aux` the linear branch's H_i, Z_i are summed to the backward's accuracy (an
    exact bf16 pair for bf16 activations, fp32 otherwise) and kept: the forward multiplies
    phi(q) with both halves, the backward takes them instead of summing them again. Extra
    memory: D x D per query block and head, D / block_q times the bytes of q per half (one
    per head with `shared_sums`). `store_lse` without `store_aux` (inference): the sparse
    branch's log-sum-exp alone, the sums rounded for the forward as without it.
    """
    b, h, n, d = q.shape
    bmap, crit_lut = classify(block_scores(q, k, block_q, block_k), n_crit, n_negl)
    linear = has_linear(bmap.shape[-1], n_crit, n_negl, linear_scope, proj_weight is not None)
    pair = store_aux and linear and bf16_pairs(q.dtype)
    tma = _use_tma(policy, k, v)
    cfg = tiles(d, block_q, block_k, q.element_size(), policy, tma=tma)
    aux = empty_aux(q)
    sparse_done = sparse_branch is not None
    hsum = hsum_lo = zsum = aux
    if linear:
        # The other family's inference sums run persistent; the Triton family keeps the grid
        # launch its tiles were tuned with (the persistent launch is timed only in the other).
        persist = None
        if sparse_done and not store_aux:
            persist = cfg["sums_programs_per_sm"], cfg["sums_stages"]
        hsum, hsum_lo, zsum = _linear_sums(
            policy, k, v, bmap, block_k, linear_scope, False, feature_map, store_aux,
            pair_out=pair, persist=persist,
            mask_tile=None if store_aux else mask_gemm_tile(cfg),
        )  # fmt: skip
    o = _new_like(policy, q)
    o_s = _new(policy, q, (b, h, n, d), q.dtype) if store_aux or sparse_done else aux
    o_l = _new(policy, q, (b, h, n, d), torch.float32) if store_aux and linear else aux
    keep_lse = store_aux or store_lse
    lse = _new(policy, q, (b, h, n), torch.float32) if keep_lse or sparse_done else aux
    den = _new(policy, q, (b, h, n), torch.float32) if store_aux and linear else aux
    block_d = feature_tile(d)
    proj = (
        proj_weight if proj_weight is not None else aux,
        proj_bias if proj_bias is not None else aux,
    )
    flags = dict(
        D=d, BLOCK_D=block_d, LUT_BLOCK_Q=block_q, FEATURE=FEATURE_CODES[feature_map],
        LINEAR=linear, HAS_BIAS=proj_bias is not None, H_PAIR=pair, STORE_AUX=store_aux,
        DOT_PREC=_dot_prec(q.dtype), SHARED_SUMS=shared_sums(linear_scope),
    )  # fmt: skip
    if sparse_done:
        sparse_branch.forward(q, k, v, crit_lut, bmap, block_q, block_k, scale, o_s, lse)
        launch(
            sla_epilogue_kernel,
            persistent_grid(triton.cdiv(n, cfg["epi_m"]) * b * h, q.device,
                            cfg["epi_programs_per_sm"]),
            q, o_s, *proj, hsum, hsum_lo if pair else hsum, zsum, o, o_l, den,
            *_bh_strides(q), *_bh_strides(o), b * h, h, n, LINEAR_EPS,
            BLOCK_M=cfg["epi_m"], LIN_CHUNK=min(cfg["epi_lin_chunk"], block_d),
            num_warps=cfg["epi_warps"], num_stages=cfg["epi_stages"], **flags,
        )  # fmt: skip
    else:
        kv_block = [1, 1, cfg["fwd_n"], block_d]
        k_tiles, v_tiles = (_descriptor(x, kv_block) for x in (k, v)) if tma else (k, v)
        launch(
            sla_fwd_kernel, (triton.cdiv(n, cfg["fwd_m"]), b * h),
            q, k, v, k_tiles, v_tiles, *proj,
            hsum, hsum_lo if pair else hsum, zsum, crit_lut,
            o, o_s, o_l, lse, den,
            *_bh_strides(q), *_bh_strides(k), *_bh_strides(v), *_bh_strides(o),
            h, n, n_crit,
            scale * LOG2E, LINEAR_EPS,
            BLOCK_M=cfg["fwd_m"], BLOCK_N=cfg["fwd_n"], LUT_BLOCK_K=block_k, KV_TMA=tma,
            STORE_LSE=store_lse, LIN_CHUNK=min(cfg["fwd_lin_chunk"], block_d),
            num_warps=cfg["fwd_warps"],
            num_stages=cfg["fwd_stages"], **flags,
        )  # fmt: skip
    # The sums are saved state only when training (inference's are rounded for the forward).
    sums = (hsum, hsum_lo, zsum) if store_aux else (aux, aux, aux)
    # A custom op's outputs may not alias one another: each unused one (aux, or a lo half that
    # is None without bf16 pairs) is its own empty tensor.
    if not store_aux:
        o_s = aux  # (the sparse branch's temporary)
    if not keep_lse:
        lse = aux
    outs = (o, bmap, crit_lut, o_s, o_l, lse, den, *sums)
    return tuple(empty_aux(q) if x is aux or x is None else x for x in outs)


def backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    has_bias: bool,
    bmap: torch.Tensor,
    crit_lut: torch.Tensor,
    o_s: torch.Tensor,
    o_l: torch.Tensor,
    lse: torch.Tensor,
    den: torch.Tensor,
    hsum: torch.Tensor,
    hsum_lo: torch.Tensor,
    zsum: torch.Tensor,
    n_crit: int,
    n_negl: int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float,
    policy: LaunchPolicy,
    sparse_branch: SparseBranch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op `slatte::sla_bwd` (`op.py`) on the Triton kernels; see its docstring.
    `sparse_branch`: the family whose forward ran the sparse branch runs its backward too."""
    b, h, n, d = q.shape
    block_d = feature_tile(d)
    linear = has_linear(bmap.shape[-1], n_crit, n_negl, linear_scope, proj_weight is not None)
    pair = linear and bf16_pairs(q.dtype)
    tma = _use_tma(policy, k, v)
    cfg = tiles(d, block_q, block_k, q.element_size(), policy, pair, tma)
    prec = _dot_prec(q.dtype)
    aux = empty_aux(q)
    do = do.contiguous()  # (B, H, N, D) in memory order: the kernels index it as (B*H, N, D)
    chunks = triton.cdiv(n, PREPROCESS_ROWS)
    delta_s = _new(policy, q, (b, h, n), torch.float32)
    do_l = _new(policy, q, (b, h, n, d), q.dtype) if linear else aux
    dw_part = _new(policy, q, (b * h * chunks, d, d), torch.float32) if linear else aux
    db_part = _new(policy, q, (b * h * chunks, d), torch.float32) if has_bias else aux
    launch(
        sla_bwd_preprocess_kernel, (chunks, b * h),
        do, o_s, o_l, proj_weight if linear else aux, delta_s, do_l, dw_part, db_part,
        h, n,
        D=d, BLOCK_D=block_d, ROWS=PREPROCESS_ROWS, BLOCK_M=64, LINEAR=linear, HAS_BIAS=has_bias,
        DOT_PREC=prec, W_PREC="ieee" if q.dtype == torch.float32 else "tf32x3", PAIR=pair,
        num_warps=8 if block_d >= 128 else 4, num_stages=3,
    )  # fmt: skip
    dw = dw_part.sum(0) if linear else aux
    if proj_weight is not None and not linear:
        dw = torch.zeros_like(proj_weight)  # nothing feeds the linear branch
    db = db_part.sum(0) if has_bias else empty_aux(q)
    flags = dict(
        D=d, BLOCK_D=block_d, LUT_BLOCK_Q=block_q, LUT_BLOCK_K=block_k,
        FEATURE=FEATURE_CODES[feature_map], LINEAR=linear, DOT_PREC=prec, SPLIT=prec == "tf32",
        SHARED_SUMS=shared_sums(linear_scope),
    )  # fmt: skip
    # The dq kernel computes Delta_l (from the same rounded terms it cancels against there),
    # which the key side's dZ sums need: dq runs first.
    sparse_done = sparse_branch is not None
    dq = _new_like(policy, q)
    dk, dv = _new_like(policy, k), _new_like(policy, v)
    if sparse_done:
        sparse_branch.backward(
            do, q, k, v, o_s, lse, crit_lut, bmap, block_q, block_k, scale, dq, dk, dv
        )
        if not linear:
            return dq, dk, dv, dw, db
    delta_l = _new(policy, q, (b, h, n), torch.float32) if linear else aux
    kv_block = [1, 1, cfg["dq_n"], block_d]
    k_tiles, v_tiles = (_descriptor(x, kv_block) for x in (k, v)) if tma else (k, v)
    launch(
        sla_bwd_dq_kernel, (triton.cdiv(n, cfg["dq_m"]), b * h),
        q, k, v, k_tiles, v_tiles,
        do, do_l, lse, delta_s, den, delta_l, hsum, hsum_lo if pair else hsum, zsum,
        crit_lut, dq,
        *_bh_strides(q), *_bh_strides(k), *_bh_strides(v), *_bh_strides(dq),
        h, n, n_crit, scale * LOG2E, scale,
        BLOCK_M=cfg["dq_m"], BLOCK_N=cfg["dq_n"], num_warps=cfg["dq_warps"],
        num_stages=cfg["dq_stages"], PAIR=pair, KV_TMA=tma, SPARSE_DONE=sparse_done, **flags,
    )  # fmt: skip
    dhsum = dhsum_lo = dzsum = dk_lin = dv_lin = aux
    if linear:
        dhsum, dhsum_lo, dzsum = _linear_sums(
            policy, q, do_l, bmap, block_q, linear_scope, True, feature_map, True, den, -delta_l,
            pair,
        )  # fmt: skip
        dhsum_lo = dhsum if dhsum_lo is None else dhsum_lo  # (unread without the pair)
    if linear and not cfg["key_linear_prologue"]:
        dk_lin, dv_lin = (_new(policy, q, (b, h, n, d), torch.float32) for _ in range(2))
        launch(
            sla_bwd_key_linear_kernel, (triton.cdiv(n, cfg["key_linear_n"]), b * h),
            k, v, dhsum, dhsum_lo, dzsum, dk_lin, dv_lin,
            *_bh_strides(k), *_bh_strides(v), h, n, scale,
            D=d, BLOCK_D=block_d, BLOCK_N=cfg["key_linear_n"], LUT_BLOCK_K=block_k,
            FEATURE=flags["FEATURE"],
            DOT_PREC=prec, SPLIT=flags["SPLIT"], PAIR=pair, SHARED_SUMS=flags["SHARED_SUMS"],
            num_warps=cfg["key_linear_warps"], num_stages=1,
        )  # fmt: skip
    crit_rows, crit_starts = (
        (aux, aux) if sparse_done else transpose_lists(crit_lut, bmap.shape[-1])
    )
    launch(
        sla_bwd_dkdv_kernel, (triton.cdiv(n, cfg["dkdv_n"]), b * h),
        q, k, v, do, lse, delta_s, dhsum, dhsum_lo, dzsum, dk_lin, dv_lin, crit_rows, crit_starts,
        dk, dv,
        *_bh_strides(q), *_bh_strides(k), *_bh_strides(v), *_bh_strides(dk), *_bh_strides(dv),
        h, n, n_crit, scale * LOG2E, scale,
        BLOCK_M=cfg["dkdv_m"], BLOCK_N=cfg["dkdv_n"], PAIR=pair,
        LIN_PROLOGUE=cfg["key_linear_prologue"], num_warps=cfg["dkdv_warps"],
        num_stages=cfg["dkdv_stages"], SPARSE_DONE=sparse_done, **flags,
    )  # fmt: skip
    return dq, dk, dv, dw, db
