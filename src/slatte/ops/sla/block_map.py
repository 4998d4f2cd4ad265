"""The SLA block map (spec section 1) and the block lists the kernels walk.

Plain PyTorch on any device: the pooled scores are tiny (Nq x Nk per head), so after one pass
over q and k the rest costs next to nothing next to attention itself.
"""

from __future__ import annotations

import torch

from .config import block_counts

CRITICAL, MARGINAL, NEGLIGIBLE = 1, 0, -1


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of the rows of each block of `block` rows: (B, H, N, D) -> (B, H, ceil(N/block), D).

    The last block may be ragged; its mean counts only its real rows. Accumulates in fp32 (fp64
    for fp64 input) without materialising an upcast copy of `x`.
    """
    b, h, n, d = x.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_full, rest = divmod(n, block)
    parts = []
    if n_full:
        # (B, H, n_full * block, D) -> (B, H, n_full, block, D)
        full = x[:, :, : n_full * block].reshape(b, h, n_full, block, d)
        parts.append(full.sum(dim=3, dtype=acc_dtype) / block)
    if rest:
        parts.append(x[:, :, n_full * block :].sum(dim=2, keepdim=True, dtype=acc_dtype) / rest)
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def block_scores(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """Pooled attention logits (B, H, Nq, Nk).

    The spec ranks `softmax(qb kb^T / sqrt(D))`; softmax is monotone along a row, so ranking the
    logits picks the same blocks (and breaks ties that softmax underflow would create).
    """
    qb = mean_pool(q, block_q)
    kb = mean_pool(k, block_k)
    return qb @ kb.transpose(-1, -2)


def classify(
    scores: torch.Tensor, critical: float | int, negligible: float | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The map from pooled scores, and each row's critical blocks.

    Returns (map, lut): int8 (B, H, Nq, Nk), 1 for the top `n_crit` of each row, -1 for the
    bottom `n_negl`; int32 (B, H, Nq, n_crit), the critical block indices of each row, ascending
    (the forward kernel's loop). A stable descending sort makes ties go to the lower block
    index, so the map is deterministic.
    """
    n_blocks = scores.shape[-1]
    n_crit, n_negl = block_counts(critical, negligible, n_blocks)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    bmap = torch.zeros(scores.shape, dtype=torch.int8, device=scores.device)
    bmap.scatter_(-1, order[..., :n_crit], CRITICAL)
    if n_negl:
        bmap.scatter_(-1, order[..., n_blocks - n_negl :], NEGLIGIBLE)
    lut = torch.sort(order[..., :n_crit], dim=-1).values.to(torch.int32)
    return bmap, lut


def block_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    critical: float | int = 0.05,
    negligible: float | int = 0.10,
    block_q: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """int8 (B, H, Nq, Nk): 1 critical, 0 marginal, -1 negligible. q, k: (B, H, N, D)."""
    return classify(block_scores(q, k, block_q, block_k), critical, negligible)[0]


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


def transpose_lists(lut: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column j, the rows i whose list `lut` (B, H, R, n) holds j, ascending.

    Returns (rows, starts), int32: the rows of column j are
    rows[..., starts[..., j] : starts[..., j + 1]] (rows: (B, H, R * n), starts: (B, H, n_cols + 1)).
    The backward's key-block programs walk these.
    """
    n_rows = lut.shape[-2]
    row_ids = torch.arange(n_rows, device=lut.device)[:, None]
    # One key per (row, entry): sorting by column then row groups each column's rows in order.
    keys = (lut.long() * n_rows + row_ids).flatten(-2)
    rows = (torch.sort(keys, dim=-1).values % n_rows).to(torch.int32)
    counts = torch.zeros(*lut.shape[:-2], n_cols + 1, dtype=torch.int32, device=lut.device)
    counts.scatter_add_(-1, lut.flatten(-2).long() + 1, torch.ones_like(lut.flatten(-2)))
    return rows.contiguous(), counts.cumsum(-1, dtype=torch.int32).contiguous()
