"""SLA in PyTorch ops that compute only what SLA computes: the "torch" kernel family.

Where the reference (`reference.py`) builds N x N masks and scores, this gathers each query
block's critical key blocks for the sparse branch and forms the linear branch from per-key-block
sums H_j = phi(K_j)^T V_j, Z_j = sum phi(K_j), added up over S(i) with one product with the
block mask (spec section 3). Any device and float dtype; autograd runs through the PyTorch ops.
The path for devices without the Triton kernels (CPU), where it is about as fast as dense
attention at 5% critical blocks instead of many times slower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .block_map import block_scores, classify, linear_mask
from .config import SLAConfig
from .reference import LINEAR_EPS, add_projected, feature_map

# Score entries per chunk of `critical_lse` (bounds its memory on long videos).
_LSE_CHUNK_ELEMENTS = 1 << 27


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B*H, ceil(N / block), block, D), the ragged last block zero-padded."""
    b, h, n, d = x.shape
    n_blocks = -(-n // block)
    if n % block:
        x = F.pad(x, (0, 0, 0, n_blocks * block - n))
    return x.reshape(b * h, n_blocks, block, d)


def critical_lse(
    q: torch.Tensor, k: torch.Tensor, lut: torch.Tensor, block_q: int, block_k: int, scale: float
) -> torch.Tensor:
    """log Σ exp(scale q·k) over each query's critical keys, (B, H, N) in at least fp32, for q, k
    (B, H, N, D) and the critical key blocks of each query block, lut (B*H, Nq, n_crit).
    Differentiable (the joint attention's training path needs its gradient); in chunks of query
    blocks, so that the gathered keys and their scores stay bounded on long videos."""
    b, h, n, _ = q.shape
    qb, kb = _blocks(q, block_q), _blocks(k, block_k)
    bh, nq = qb.shape[:2]
    acc = torch.promote_types(q.dtype, torch.float32)
    heads = torch.arange(bh, device=q.device)[:, None, None]
    lut = lut.long()
    rows = max(1, _LSE_CHUNK_ELEMENTS // (bh * block_q * lut.shape[-1] * block_k))
    out = []
    for start in range(0, nq, rows):
        crit = lut[:, start : start + rows]  # (B*H, c, n_crit)
        keys = kb[heads, crit].flatten(2, 3)  # (B*H, c, n_crit * bk, D)
        scores = (qb[:, start : start + rows].to(acc) @ keys.to(acc).transpose(-1, -2)) * scale
        key_pos = (crit[..., None] * block_k + torch.arange(block_k, device=q.device)).flatten(2)
        scores = scores.masked_fill(~(key_pos < n)[:, :, None, :], float("-inf"))
        out.append(scores.logsumexp(dim=-1).flatten(1))  # (B*H, c * bq)
    return torch.cat(out, dim=1).reshape(b, h, nq * block_q)[:, :, :n]


def sla_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    config: SLAConfig,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SLA output (B, H, N, D) in q's dtype for q, k, v (B, H, N, D); what `sla_reference`
    gives, to rounding. Without a projection the linear branch is skipped: O = O_s.
    `return_lse`: also the sparse branch's log-sum-exp (natural log), (B, H, N)."""
    b, h, n, d = q.shape
    bq, bk = config.block_q, config.block_k
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    bmap, lut = classify(block_scores(q, k, bq, bk), config.critical, config.negligible)
    nq, nk = bmap.shape[-2:]
    qb, kb, vb = _blocks(q, bq), _blocks(k, bk), _blocks(v, bk)  # (B*H, blocks, rows, D)

    # Sparse branch: softmax over the keys of each query block's critical blocks.
    heads = torch.arange(b * h, device=q.device)[:, None, None]
    crit = lut.reshape(b * h, nq, -1).long()  # (B*H, Nq, n_crit)
    k_crit = kb[heads, crit].flatten(2, 3)  # (B*H, Nq, n_crit * bk, D)
    v_crit = vb[heads, crit].flatten(2, 3)
    mask = None
    if n % bk:  # keys past N (the padded last block) take no weight
        key_pos = (crit[..., None] * bk + torch.arange(bk, device=q.device)).flatten(2)
        mask = (key_pos < n)[:, :, None, :]  # (B*H, Nq, 1, n_crit * bk)
    # SDPA's fused kernel, each query block one row of its batch: (B*H, Nq, bq, D)
    out = F.scaled_dot_product_attention(qb, k_crit, v_crit, attn_mask=mask, scale=scale)
    out = out.reshape(b, h, nq * bq, d)[:, :, :n]
    if return_lse:
        lse = critical_lse(q, k, crit, bq, bk, scale)
    if proj_weight is None:
        return (out, lse) if return_lse else out

    # Linear branch: per-key-block sums, added up over S(i) (rows past N contribute nothing).
    phi_k = feature_map(kb, config.feature_map)
    if n % bk:
        real = (torch.arange(nk * bk, device=q.device) < n).reshape(nk, bk, 1)
        phi_k = torch.where(real, phi_k, 0.0)
    # [H_j | Z_j] in one product: V_j with a column of ones appended, (B*H, Nk, D, D + 1)
    v_ones = torch.cat([vb, torch.ones_like(vb[..., :1])], dim=-1)
    hz_blk = phi_k.transpose(-1, -2) @ v_ones
    sel = linear_mask(bmap, config.linear_scope).reshape(b * h, nq, nk).to(q.dtype)
    hz_sum = (sel @ hz_blk.flatten(2)).reshape(b * h, nq, d, d + 1)  # [H_i | Z_i]
    num_den = feature_map(qb, config.feature_map) @ hz_sum  # (B*H, Nq, bq, D + 1)
    # The normalisation in at least fp32: with S(i) empty the gradients hold 1 / eps.
    div_dtype = torch.promote_types(q.dtype, torch.float32)
    num = num_den[..., :d].to(div_dtype)
    den = num_den[..., d:].to(div_dtype) + LINEAR_EPS
    out_l = (num / den).reshape(b, h, nq * bq, d)[:, :, :n]
    out = add_projected(out, out_l, proj_weight, proj_bias)
    return (out, lse) if return_lse else out
