"""SLA in plain PyTorch: the executable specification (`shared/specs/SLA.md`).

Written for clarity, not speed: it builds token-level (N x N) masks and score matrices. Works in
any float dtype (float64 gives the "truth" the kernels are measured against) on any device, and
computes everything in the dtype of its inputs, so that a run in bf16 shows the error that
bf16 arithmetic alone brings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .block_map import CRITICAL, block_map, linear_mask
from .config import SLAConfig

# Added to the linear branch's denominator, as in the official SLA code.
LINEAR_EPS = 1e-5


def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    """phi applied row-wise: "softmax" over the D features, "elu" (elu + 1) or "relu"."""
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return F.elu(x) + 1
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"feature_map must be one of ('softmax', 'elu', 'relu'), got {name!r}")


def expand_blocks(
    mask: torch.Tensor, n: int, block_q: int, block_k: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Block mask (B, H, Nq, Nk) -> token mask (B, H, len(rows), n) for the query `rows` (all n
    rows if None); the ragged last key block is cut off."""
    rows = torch.arange(n, device=mask.device) if rows is None else rows
    return mask[..., rows // block_q, :].repeat_interleave(block_k, dim=-1)[..., :n]


def sparse_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    critical_tokens: torch.Tensor,
    scale: float,
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of each query over the keys of its critical blocks, (B, H, N, D), and
    with `return_lse` the log-sum-exp of those scores (natural log), (B, H, N) in at least fp32
    (else None: one more pass over the N x N scores)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~critical_tokens, float("-inf"))
    lse = None
    if return_lse:
        lse = scores.to(torch.promote_types(q.dtype, torch.float32)).logsumexp(dim=-1)
    return torch.softmax(scores, dim=-1) @ v, lse


def linear_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    linear_tokens: torch.Tensor,
    feature: str,
    eps: float = LINEAR_EPS,
) -> torch.Tensor:
    """Linear attention of each query over the keys of its blocks S(i); 0 where S(i) is empty.

    Computed as masked (phi(q) phi(k)^T) v, which equals the spec's phi(q) H_i / (phi(q) Z_i + eps)
    term by term without the block sums that the fast paths use.
    """
    scores = feature_map(q, feature) @ feature_map(k, feature).transpose(-1, -2)
    # `where`, not a product with the mask, and the row normalisation (in at least fp32) before
    # the product with v: with S(i) empty the gradients hold 1 / eps, which overflows half
    # precision, and inf * 0 would turn the masked entries into NaN.
    weights = torch.where(linear_tokens, scores, 0.0)
    div_dtype = torch.promote_types(q.dtype, torch.float32)
    den = weights.sum(dim=-1, keepdim=True, dtype=div_dtype) + eps
    return (weights.to(div_dtype) / den).to(q.dtype) @ v


def sla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    config: SLAConfig | None = None,
    *,
    scale: float | None = None,
    bmap: torch.Tensor | None = None,
    query_rows: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SLA output (B, H, N, D) in q's dtype for q, k, v of shape (B, H, N, D), with the
    options `config` (`SLAConfig()` if None; its `projection` is the caller's business).
    `return_lse`: also the sparse branch's log-sum-exp (`sparse_branch`), (B, H, N).

    `bmap`: a precomputed block map (B, H, Nq, Nk) to use instead of computing one from q and k
    (tests pass the map of the low-precision inputs to a float64 run so both choose the same
    blocks). `query_rows`: compute only these output rows, (B, H, len(query_rows), D), so that
    long sequences can be checked without N x N matrices. Without a projection
    (`proj_weight=None`) the linear branch is skipped: O = O_s.
    """
    config = SLAConfig() if config is None else config
    block_q, block_k = config.block_q, config.block_k
    n, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if bmap is None:
        bmap = block_map(q, k, config)
    if query_rows is not None:
        q = q[:, :, query_rows]
    critical_tokens = expand_blocks(bmap == CRITICAL, n, block_q, block_k, query_rows)
    out, lse = sparse_branch(q, k, v, critical_tokens, scale, return_lse)
    if proj_weight is not None:
        in_linear = linear_mask(bmap, config.linear_scope)
        linear_tokens = expand_blocks(in_linear, n, block_q, block_k, query_rows)
        out_l = linear_branch(q, k, v, linear_tokens, config.feature_map)
        out = add_projected(out, out_l, proj_weight, proj_bias)
    return (out, lse) if return_lse else out


def add_projected(
    out_s: torch.Tensor,
    out_l: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
) -> torch.Tensor:
    """O = O_s + proj(O_l) in O_s's dtype; the projection is kept in fp32 (fp64 for a float64
    run) whatever the activations' dtype."""
    proj_dtype = torch.promote_types(out_s.dtype, torch.float32)
    bias = None if proj_bias is None else proj_bias.to(proj_dtype)
    projected = F.linear(out_l.to(proj_dtype), proj_weight.to(proj_dtype), bias)
    return (out_s.to(proj_dtype) + projected).to(out_s.dtype)
