"""The SLA block map (spec section 1) and the block lists the kernels walk.

PyTorch on any device. The pooled scores are tiny (Nq x Nk per head), so on the GPU the map
costs little next to attention itself, but its many small torch ops cost about as much host time
per call as attention's kernels take on the GPU. So on CUDA each step is one Triton launch
(`triton/block_map_launchers.py`): the pooling of q and k (then one matmul), the classification
(rather than two sorts) and the backward's transposed lists (rather than a sort and a scatter).
Each gives what its torch code gives (the pooling to fp32 rounding, the rest bit for bit), and
every caller on a device takes the same path, so the kernels and the reference see one map.
Triton is imported only there, so the reference path never needs it.
"""

from __future__ import annotations

import torch

from ..triton_interpreter import triton_interpreting
from .config import SLAConfig, block_counts

CRITICAL, MARGINAL, NEGLIGIBLE = 1, 0, -1


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of the rows of each block of `block` rows: (B, H, N, D) -> (B, H, ceil(N/block), D).

    The last block may be ragged; its mean counts only its real rows. Accumulates in fp32 (fp64
    for fp64 input) without materialising an upcast copy of `x`. No gradient: the means only
    feed the block map, a discrete choice. The result is a (B, H, blocks, D) view of a
    block-major buffer (what a matmul takes as it is).
    """
    b, h, n, d = x.shape
    x = x.detach()  # reductions with out= refuse inputs that require grad
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_full, rest = divmod(n, block)
    # Both means go straight into one buffer, a ragged block's as one more small reduction
    # instead of a concatenation. Block-major, so that each part is a contiguous slice
    # (torch.compile accepts only contiguous out= tensors).
    out = torch.empty(n_full + (rest > 0), b, h, d, dtype=acc_dtype, device=x.device)
    if n_full:
        # (B, H, n_full * block, D) -> (n_full, B, H, block, D)
        full = x[:, :, : n_full * block].reshape(b, h, n_full, block, d).permute(2, 0, 1, 3, 4)
        torch.mean(full, dim=3, dtype=acc_dtype, out=out[:n_full])
    if rest:
        torch.mean(x[:, :, n_full * block :], dim=2, dtype=acc_dtype, out=out[n_full])
    return out.permute(1, 2, 0, 3)


def _kernel_wanted(x: torch.Tensor, use_kernel: bool | None, op: str) -> bool:
    """Whether `op` takes its Triton kernel: `use_kernel`, where None means "on CUDA". True also
    runs it on the CPU under TRITON_INTERPRET=1 (tests), and raises a ValueError on the CPU
    without it."""
    if use_kernel is None:
        # Under torch.compile the torch code (same result) spares Dynamo tracing a Triton launch.
        return x.is_cuda and not torch.compiler.is_compiling()
    if use_kernel and not x.is_cuda and not triton_interpreting():
        raise ValueError(
            f"{op}'s kernel needs a CUDA tensor or TRITON_INTERPRET=1, got device {x.device}"
        )
    return use_kernel


_POOL_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """Pooled attention logits (B, H, Nq, Nk), fp32 (fp64 for fp64 input).

    The spec ranks `softmax(qb kb^T / sqrt(D))`; softmax is monotone along a row, so ranking the
    logits picks the same blocks (and breaks ties that softmax underflow would create).

    `use_kernel`: pool q and k with one Triton launch (`triton/kernels_block_pool.py`) instead of
    `mean_pool`; None means "on CUDA". True also runs it on the CPU under TRITON_INTERPRET=1
    (tests). Both pool to fp32 rounding (the sums' order differs); fp64, and q and k of
    different (B, H) or D, always go through `mean_pool`.
    """
    if (
        _kernel_wanted(q, use_kernel, "block_scores")
        and q.dtype in _POOL_KERNEL_DTYPES
        and k.dtype in _POOL_KERNEL_DTYPES
        and q.shape[:2] == k.shape[:2]
        and q.shape[-1] == k.shape[-1]
    ):
        from .triton.block_map_launchers import pool_qk

        qb, kb = pool_qk(q, k, block_q, block_k)
    else:
        qb, kb = mean_pool(q, block_q), mean_pool(k, block_k)
    return qb @ kb.transpose(-1, -2)


def classify(
    scores: torch.Tensor,
    critical: float | int,
    negligible: float | int,
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The map from pooled scores, and each row's critical blocks.

    Returns (map, lut): int8 (B, H, Nq, Nk), 1 for the top `n_crit` of each row, -1 for the
    bottom `n_negl`; int32 (B, H, Nq, n_crit), the critical block indices of each row, ascending
    (the forward kernel's loop). Ties go as in a stable descending sort: a critical one to the
    lower block index, a negligible one to the higher, so the map is deterministic.

    `use_kernel`: pick the blocks with the Triton kernel (`triton/kernels_block_map.py`) instead of
    sorting; None means "on CUDA". True also runs it on the CPU under TRITON_INTERPRET=1 (tests).
    Both give the same map and LUT bit for bit; fp32 rows wider than the kernel's tile, and other
    dtypes, always go through the sort.
    """
    n_blocks = scores.shape[-1]
    n_crit, n_negl = block_counts(critical, negligible, n_blocks)
    if _kernel_wanted(scores, use_kernel, "classify") and scores.dtype == torch.float32:
        from .triton.block_map_launchers import classify_blocks
        from .triton.kernels_block_map import MAX_BLOCK

        if 0 < n_blocks <= MAX_BLOCK:
            return classify_blocks(scores, n_crit, n_negl)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    bmap = torch.zeros(scores.shape, dtype=torch.int8, device=scores.device)
    bmap.scatter_(-1, order[..., :n_crit], CRITICAL)
    if n_negl:
        bmap.scatter_(-1, order[..., n_blocks - n_negl :], NEGLIGIBLE)
    lut = torch.sort(order[..., :n_crit], dim=-1).values.to(torch.int32)
    return bmap, lut


def block_map(q: torch.Tensor, k: torch.Tensor, config: SLAConfig) -> torch.Tensor:
    """int8 (B, H, Nq, Nk): 1 critical, 0 marginal, -1 negligible. q, k: (B, H, N, D)."""
    scores = block_scores(q, k, config.block_q, config.block_k)
    return classify(scores, config.critical, config.negligible)[0]


def linear_mask(bmap: torch.Tensor, linear_scope: str) -> torch.Tensor:
    """bool (B, H, Nq, Nk): the key blocks S(i) that feed the linear branch of each query block."""
    if linear_scope == "marginal":
        return bmap == MARGINAL
    if linear_scope == "noncritical":
        return bmap != CRITICAL
    if linear_scope == "all":
        return torch.ones_like(bmap, dtype=torch.bool)
    raise ValueError(
        f"linear_scope must be one of ('marginal', 'noncritical', 'all'), got {linear_scope!r}"
    )


def transpose_lists(
    lut: torch.Tensor, n_cols: int, *, use_kernel: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column j, the rows i whose list `lut` (B, H, R, n) holds j, ascending.

    Each row of `lut` holds n distinct ascending columns in [0, n_cols) (`classify`'s LUT).
    Returns (rows, starts), int32: the rows of column j are
    rows[..., starts[..., j] : starts[..., j + 1]] (rows: (B, H, R * n), starts: (B, H, n_cols + 1)).
    The backward's key-block programs walk these.

    `use_kernel`: build them with one Triton launch (`triton/kernels_block_lists.py`) instead
    of a sort and a scatter; None means "on CUDA". True also runs it on the CPU under
    TRITON_INTERPRET=1 (tests). Both give the same lists bit for bit.
    """
    if _kernel_wanted(lut, use_kernel, "transpose_lists"):
        from .triton.block_map_launchers import transpose_lists as transpose_lists_kernel

        return transpose_lists_kernel(lut, n_cols)
    n_rows = lut.shape[-2]
    row_ids = torch.arange(n_rows, device=lut.device)[:, None]
    # One key per (row, entry): sorting by column then row groups each column's rows in order.
    keys = (lut.long() * n_rows + row_ids).flatten(-2)
    rows = (torch.sort(keys, dim=-1).values % n_rows).to(torch.int32)
    counts = torch.zeros(*lut.shape[:-2], n_cols + 1, dtype=torch.int32, device=lut.device)
    counts.scatter_add_(-1, lut.flatten(-2).long() + 1, torch.ones_like(lut.flatten(-2)))
    return rows.contiguous(), counts.cumsum(-1, dtype=torch.int32).contiguous()
