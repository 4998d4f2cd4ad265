"""Ring and hybrid (Ulysses x ring) sequence parallelism for SLA and dense attention.

Every process of a ring group holds a contiguous chunk of the sequence: q, k, v (B, H, n_r, D),
chunks in group-rank order making up the N tokens. The chunks may have any lengths (a block
may straddle two processes: `torch.tensor_split`'s near-equal chunks, or diffusers' `chunk`,
both work for any N), so nothing is padded.

- Block map: each process sums its rows of q and k per global block; one all-reduce of those
  sums (one D-vector per block) gives every process the pooled means, and so the same map, that
  one process computes.
- Sparse branch: K/V chunks travel around the ring (`isend`/`irecv`, started before the chunk in
  hand is computed); each step gives a partial output and log-sum-exp per query row over the
  critical keys of that chunk, merged into the running ones. The backward sends the K/V chunks
  around again with their dK/dV accumulators, which end the ring at their owner.
- Linear branch: each process sums phi(K_j)^T V_j (D x D) and phi(K_j) over its rows of each
  key block j; one all-reduce gives the exact h_j, z_j, so each query block's H_i, Z_i are
  exact. The all-reduce is differentiable (its backward all-reduces the sums' gradients) and the
  rest is local PyTorch under autograd.

The per-process compute is plain PyTorch (masked attention per K/V chunk, the local query rows
in tiles whose scores stay under `max_scores`): exact on any device, but it computes the scores
of every key of a chunk, critical or not, so it does the work of dense attention. The Triton and
FlashAttention-4 kernels compute the map from the q and k they are given, so they cannot serve a
chunk of keys under a global map; that needs a forward entry taking (q, K/V chunk, the chunk's
critical-block lists with their global offset) and returning O and the per-row LSE, and a
backward entry taking the final LSE (README, "Several GPUs").

Hybrid: heads are split over a Ulysses group (all-to-all, `slatte.ops.sequence_parallel`) and
the ring runs across groups; process (ring r, Ulysses u) is global rank r * U + u, the layout
of diffusers' context-parallel mesh ("ring", "ulysses").
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..ops.sequence_parallel import (
    all_reduce_sum,
    group_size,
    ring_shift,
    shard_lengths,
    ulysses_attention,
)
from ..ops.sla import sparse_linear_attention
from ..ops.sla.block_map import CRITICAL, classify, linear_mask
from ..ops.sla.config import SLAConfig
from ..ops.sla.reference import LINEAR_EPS, add_projected, feature_map


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


# ---------------------------------------------------------------------------------------------
# Rows of a chunk grouped by global block
# ---------------------------------------------------------------------------------------------


def _to_blocks(x: torch.Tensor, offset: int, block: int) -> tuple[torch.Tensor, int]:
    """Rows (B, H, n, F) starting at global row `offset` → (B, H, nb, block, F) zero-padded so
    that each slice holds one global block's rows here, and the first block's global index."""
    first = offset // block
    front = offset - first * block
    n = x.shape[2]
    nb = -(-(front + n) // block)
    padded = F.pad(x, (0, 0, front, nb * block - front - n))
    return padded.unflatten(2, (nb, block)), first


def _from_blocks(x: torch.Tensor, offset: int, block: int, n: int) -> torch.Tensor:
    """Inverse of `_to_blocks`: (B, H, nb, block, F) → the n real rows (B, H, n, F)."""
    front = offset - (offset // block) * block
    return x.flatten(2, 3)[:, :, front : front + n]


def _global_block_sums(
    blocks: torch.Tensor, first: int, n_blocks: int, group: dist.ProcessGroup
) -> torch.Tensor:
    """Per-block partial sums (B, H, nb, ...) of blocks [first, first + nb) → the sums over the
    group of every block (B, H, n_blocks, ...)."""
    tail = [0, 0] * (blocks.dim() - 3)
    placed = F.pad(blocks, (*tail, first, n_blocks - first - blocks.shape[2]))
    return all_reduce_sum(placed, group)


def _block_rows(n: int, n_blocks: int, block: int, like: torch.Tensor) -> torch.Tensor:
    """Real rows of each of the n_blocks blocks of a sequence of n rows (the last may be ragged)."""
    starts = torch.arange(n_blocks, device=like.device) * block
    return (n - starts).clamp(max=block).to(like.dtype)


# ---------------------------------------------------------------------------------------------
# The block map
# ---------------------------------------------------------------------------------------------


def _ring_layout(x: torch.Tensor, group: dist.ProcessGroup) -> tuple[list[int], int]:
    """(every process's chunk length, this process's global offset)."""
    lengths = shard_lengths(x.shape[2], group, x.device)
    return lengths, sum(lengths[: dist.get_rank(group)])


def _pooled(
    x: torch.Tensor, offset: int, n: int, block: int, group: dist.ProcessGroup
) -> torch.Tensor:
    """Mean of each global block's rows (B, H, ceil(n / block), D), from the rows here."""
    blocks, first = _to_blocks(x.detach().to(_acc_dtype(x)), offset, block)
    n_blocks = -(-n // block)
    sums = _global_block_sums(blocks.sum(3), first, n_blocks, group)
    return sums / _block_rows(n, n_blocks, block, sums)[:, None]


def _map_of(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SLAConfig,
    group: dist.ProcessGroup,
    lengths: list[int],
    offset: int,
) -> torch.Tensor:
    n = sum(lengths)
    qb = _pooled(q, offset, n, config.block_q, group)
    kb = _pooled(k, offset, n, config.block_k, group)
    return classify(qb @ kb.transpose(-1, -2), config.critical, config.negligible)[0]


def ring_block_map(
    q: torch.Tensor, k: torch.Tensor, config: SLAConfig, group: dist.ProcessGroup
) -> torch.Tensor:
    """The SLA block map (B, H, Nq, Nk) of the whole sequence, the same on every process of
    `group`, from this process's chunk of q and k (B, H, n_r, D)."""
    return _map_of(q, k, config, group, *_ring_layout(q, group))


# ---------------------------------------------------------------------------------------------
# The sparse (or dense) branch: K/V around the ring, outputs merged through their LSE
# ---------------------------------------------------------------------------------------------


# The most scores (query rows x keys of a chunk, all batches and heads) one step holds at once:
# 2^27 fp32 scores are 512 MiB per temporary, so 64K tokens on 2 GPUs (32K x 32K per head)
# runs in row tiles instead of holding 64 GiB of scores per head group.
MAX_SCORES = 2**27


class _RingSoftmax:
    """Which keys each local query row attends to, chunk by chunk: the critical blocks of its
    query block under `bmap`, or every key when `bmap` is None (dense attention); and the tiles
    of query rows that keep each step's scores within `max_scores`."""

    def __init__(
        self,
        bmap: torch.Tensor | None,
        lengths: list[int],
        rank: int,
        block_q: int,
        block_k: int,
        device: torch.device,
        max_scores: int,
    ):
        if isinstance(max_scores, bool) or not isinstance(max_scores, int) or max_scores < 1:
            raise ValueError(f"max_scores must be an int >= 1, got {max_scores!r}")
        self.bmap, self.lengths, self.rank, self.max_scores = bmap, lengths, rank, max_scores
        self.offsets = [sum(lengths[:i]) for i in range(len(lengths))]
        self.block_k = block_k
        rows = torch.arange(lengths[rank], device=device) + self.offsets[rank]
        self.q_blocks = rows // block_q  # the global query block of each local row

    def source(self, step: int) -> int:
        """Group rank whose K/V chunk this process holds at ring step `step`."""
        return (self.rank - step) % len(self.lengths)

    def tiles(self, src: int, batch_heads: int) -> list[slice]:
        """Slices of the local query rows, each small enough against chunk `src`."""
        n = self.lengths[self.rank]
        rows = max(1, self.max_scores // max(1, self.lengths[src] * batch_heads))
        return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]

    def mask(self, src: int, rows: slice) -> torch.Tensor | None:
        """bool (B, H, len(rows), n_src): the keys of chunk `src` that those rows attend to."""
        if self.bmap is None:
            return None
        keys = torch.arange(self.lengths[src], device=self.bmap.device) + self.offsets[src]
        rows_map = self.bmap.index_select(2, self.q_blocks[rows])
        return rows_map.index_select(3, keys // self.block_k) == CRITICAL

    def chunk_shape(self, like: torch.Tensor, src: int) -> tuple[int, ...]:
        shape = list(like.shape)
        shape[-2] = self.lengths[src]
        return tuple(shape)


def _scores(q, k, mask, scale):
    scores = (q @ k.transpose(-1, -2)) * scale
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


class _RingAttention(torch.autograd.Function):
    """Softmax attention of local q over the keys of every chunk that `_RingSoftmax` allows:
    returns O (q's dtype) for q, k, v (B, H, n_r, D)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: _RingSoftmax, group, scale: float):
        acc = _acc_dtype(q)
        qa = q.to(acc)
        out = torch.zeros(qa.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        kv = torch.stack([k, v])  # one message per step: (2, B, H, n_src, D)
        size, batch_heads = group_size(group), q.shape[0] * q.shape[1]
        for step in range(size):
            src = plan.source(step)
            if step + 1 < size:
                incoming = kv.new_empty(plan.chunk_shape(kv, plan.source(step + 1)))
                requests = ring_shift(kv, incoming, group)
            ka, va = kv[0].to(acc), kv[1].to(acc)
            for rows in plan.tiles(src, batch_heads):
                scores = _scores(qa[:, :, rows], ka, plan.mask(src, rows), scale)
                old_lse = lse[:, :, rows]
                new_lse = torch.logaddexp(old_lse, torch.logsumexp(scores, dim=-1))
                # Rows that attend to no key so far keep lse = -inf: weights 0, not NaN.
                safe = torch.where(torch.isinf(new_lse), 0.0, new_lse)
                probs = torch.exp(scores - safe[..., None])
                out[:, :, rows] = (
                    out[:, :, rows] * torch.exp(old_lse - safe)[..., None] + probs @ va
                )
                lse[:, :, rows] = new_lse
            if step + 1 < size:
                for request in requests:
                    request.wait()
                kv = incoming
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.group, ctx.scale = plan, group, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        plan, group, scale = ctx.plan, ctx.group, ctx.scale
        acc = _acc_dtype(q)
        qa, do = q.to(acc), grad_out.to(acc)
        delta = (do * out.to(acc)).sum(-1, keepdim=True)  # D_s = rowsum(dO o O)
        dq = torch.zeros_like(qa)
        kv = torch.stack([k, v])
        dkv = torch.zeros(kv.shape, dtype=acc, device=q.device)  # travels with its K/V chunk
        size, batch_heads = group_size(group), q.shape[0] * q.shape[1]
        for step in range(size):
            src = plan.source(step)
            if step + 1 < size:
                incoming = kv.new_empty(plan.chunk_shape(kv, plan.source(step + 1)))
                requests = ring_shift(kv, incoming, group)
            ka, va = kv[0].to(acc), kv[1].to(acc)
            for rows in plan.tiles(src, batch_heads):
                q_rows, do_rows = qa[:, :, rows], do[:, :, rows]
                scores = _scores(q_rows, ka, plan.mask(src, rows), scale)
                probs = torch.exp(scores - lse[:, :, rows, None])
                dscores = probs * (do_rows @ va.transpose(-1, -2) - delta[:, :, rows]) * scale
                dq[:, :, rows] += dscores @ ka
                dkv[0] += dscores.transpose(-1, -2) @ q_rows
                dkv[1] += probs.transpose(-1, -2) @ do_rows
            # After the last step this sends each accumulator to its owner (the next process).
            dkv_in = dkv.new_empty(plan.chunk_shape(dkv, plan.source(step + 1)))
            for request in ring_shift(dkv, dkv_in, group):
                request.wait()
            dkv = dkv_in
            if step + 1 < size:
                for request in requests:
                    request.wait()
                kv = incoming
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    scale: float | None = None,
    max_scores: int = MAX_SCORES,
) -> torch.Tensor:
    """Dense softmax attention over a sequence split on `group` (ring attention): q, k, v
    (B, H, n_r, D) are this process's chunk; returns its output (B, H, n_r, D). The dense
    counterpart of `ring_sla`, for comparison; `max_scores` as there."""
    _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if group_size(group) == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    lengths, _ = _ring_layout(q, group)
    plan = _RingSoftmax(None, lengths, dist.get_rank(group), 1, 1, q.device, max_scores)
    return _RingAttention.apply(q, k, v, plan, group, scale)


# ---------------------------------------------------------------------------------------------
# SLA
# ---------------------------------------------------------------------------------------------


def _linear_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bmap: torch.Tensor,
    config: SLAConfig,
    group: dist.ProcessGroup,
    n: int,
    offset: int,
) -> torch.Tensor:
    """phi(q) H_i / (phi(q) Z_i + eps) for the local rows, with h_j, z_j summed over the group."""
    acc = _acc_dtype(q)
    phi_k, k_first = _to_blocks(feature_map(k.to(acc), config.feature_map), offset, config.block_k)
    v_blocks, _ = _to_blocks(v.to(acc), offset, config.block_k)
    n_kb = bmap.shape[-1]
    # Padded rows are zero in phi(K) (padded after phi), so they add nothing to h_j or z_j.
    h = _global_block_sums(
        torch.einsum("bhjrd,bhjre->bhjde", phi_k, v_blocks), k_first, n_kb, group
    )
    z = _global_block_sums(phi_k.sum(3), k_first, n_kb, group)
    phi_q, q_first = _to_blocks(feature_map(q.to(acc), config.feature_map), offset, config.block_q)
    in_s = linear_mask(bmap, config.linear_scope)[:, :, q_first : q_first + phi_q.shape[2]]
    in_s = in_s.to(acc)
    h_i = torch.einsum("bhij,bhjde->bhide", in_s, h)  # (B, H, local query blocks, D, D)
    z_i = torch.einsum("bhij,bhjd->bhid", in_s, z)
    num = torch.einsum("bhird,bhide->bhire", phi_q, h_i)
    den = torch.einsum("bhird,bhid->bhir", phi_q, z_i)[..., None] + LINEAR_EPS
    return _from_blocks(num / den, offset, config.block_q, q.shape[2])


def ring_sla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    config: SLAConfig,
    group: dist.ProcessGroup | None,
    *,
    scale: float | None = None,
    max_scores: int = MAX_SCORES,
) -> torch.Tensor:
    """SLA (`shared/specs/SLA.md`) over a sequence split on `group`, ring-style.

    q, k, v (B, H, n_r, D): this process's contiguous chunk (chunks in group-rank order make up
    the sequence; any lengths). Returns this chunk's rows of what `sparse_linear_attention` gives
    for the whole sequence (B, H, n_r, D), in q's dtype; differentiable in q, k, v and the
    projection. Without a group (or a group of one) it is the single-process op.

    `max_scores`: the most attention scores (query rows x keys of one chunk, over all batches
    and heads) a step holds at once; the local query rows are computed in tiles within it.
    """
    _check_qkv(q, k, v)
    if not isinstance(config, SLAConfig):
        raise ValueError(f"config must be an SLAConfig, got {type(config).__name__}")
    if group_size(group) == 1:
        return sparse_linear_attention(q, k, v, proj_weight, proj_bias, config, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lengths, offset = _ring_layout(q, group)
    bmap = _map_of(q, k, config, group, lengths, offset)
    rank = dist.get_rank(group)
    plan = _RingSoftmax(bmap, lengths, rank, config.block_q, config.block_k, q.device, max_scores)
    out = _RingAttention.apply(q, k, v, plan, group, scale)
    if proj_weight is None:
        return out
    out_l = _linear_branch(q, k, v, bmap, config, group, sum(lengths), offset)
    return add_projected(out, out_l, proj_weight, proj_bias)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "ring attention is self-attention on (B, H, n, D) chunks of one shape; got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Hybrid: Ulysses inside a group, ring across groups
# ---------------------------------------------------------------------------------------------


def hybrid_groups(ring_degree: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """(ring group, Ulysses group) of this process when the world is split into `ring_degree`
    ring positions of U = world / ring_degree processes each: global rank r * U + u is ring
    position r, Ulysses rank u (consecutive ranks share heads; diffusers' mesh layout). Every
    process must call it (it creates the groups)."""
    if isinstance(ring_degree, bool) or not isinstance(ring_degree, int) or ring_degree < 1:
        raise ValueError(f"ring_degree must be an int >= 1, got {ring_degree!r}")
    world = dist.get_world_size()
    if world % ring_degree:
        raise ValueError(
            f"ring_degree {ring_degree} must divide the number of processes ({world}); "
            f"allowed: {[d for d in range(1, world + 1) if world % d == 0]}"
        )
    ulysses = world // ring_degree
    rank = dist.get_rank()
    mine = {}
    for r in range(ring_degree):  # every process creates every group, in the same order
        group = dist.new_group([r * ulysses + u for u in range(ulysses)])
        if rank // ulysses == r:
            mine["ulysses"] = group
    for u in range(ulysses):
        group = dist.new_group([r * ulysses + u for r in range(ring_degree)])
        if rank % ulysses == u:
            mine["ring"] = group
    return mine["ring"], mine["ulysses"]


def _ulysses_then_ring(q, k, v, ring_fn, ulysses_group):
    _check_qkv(q, k, v)
    if group_size(ulysses_group) > 1:
        lengths = shard_lengths(q.shape[2], ulysses_group, q.device)
        if len(set(lengths)) > 1:
            raise ValueError(
                f"the processes of a Ulysses group must hold chunks of one length, got {lengths}"
            )
    return ulysses_attention(q, k, v, ring_fn, ulysses_group)


def hybrid_sla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    config: SLAConfig,
    ring_group: dist.ProcessGroup | None,
    ulysses_group: dist.ProcessGroup | None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """SLA over a sequence split on ring x Ulysses processes (`hybrid_groups`): q, k, v
    (B, H, n, D) this process's chunk, the same n on every process of its Ulysses group, H
    divisible by its size. The all-to-all gives each process H/U heads of its Ulysses group's
    chunks (one contiguous chunk of the ring); `ring_sla` runs across the ring on them."""

    def ring_fn(q_, k_, v_):
        return ring_sla(q_, k_, v_, proj_weight, proj_bias, config, ring_group, scale=scale)

    return _ulysses_then_ring(q, k, v, ring_fn, ulysses_group)


def hybrid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_group: dist.ProcessGroup | None,
    ulysses_group: dist.ProcessGroup | None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense attention split as `hybrid_sla` (for comparison)."""

    def ring_fn(q_, k_, v_):
        return ring_attention(q_, k_, v_, ring_group, scale=scale)

    return _ulysses_then_ring(q, k, v, ring_fn, ulysses_group)


__all__ = [
    "hybrid_attention",
    "hybrid_groups",
    "hybrid_sla",
    "ring_attention",
    "ring_block_map",
    "ring_sla",
]
