"""Ulysses sequence parallelism: shard a long token sequence over a group of processes.

Every process holds a contiguous chunk of the sequence (N/P tokens of all H heads). Around
attention one all-to-all turns that into all N tokens of H/P heads, attention runs unchanged on
full sequences (dense or SLA: both see exactly the tokens, in exactly the order, a single process
would), and a second all-to-all turns the result back into sequence chunks. Everything outside
attention (projections, MLPs, norms) acts token by token and needs no communication.

Shapes: B batch, H heads, N full sequence length, P group size, D head dim.
    sequence-sharded (B, H, N/P, D)  --seq_to_heads-->  head-sharded (B, H/P, N, D)
    head-sharded (B, H/P, N, D)      --heads_to_seq-->  sequence-sharded (B, H, N/P, D)

Collectives only: which frames of a video a process holds is `slatte.parallel.SequenceShard`,
which the trainer and the sampler give the model. The ring decomposition
(`slatte.parallel.ring`) takes its collectives from here too: the chunk lengths, the K/V shift
to the next process, a differentiable all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from einops import rearrange

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def group_size(group: dist.ProcessGroup | None) -> int:
    """Number of processes in `group` (1 when there is no group or no process group at all)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def check_heads(num_heads: int, size: int) -> None:
    """Ulysses splits heads over the group: say so clearly when they do not divide."""
    if num_heads % size:
        raise ValueError(
            f"sequence parallelism over {size} processes needs the number of attention heads "
            f"to be divisible by {size}, got {num_heads} heads; use a sequence-parallel size "
            f"that divides {num_heads} (e.g. 1, or a divisor of it)"
        )


# ---------------------------------------------------------------------------------------------
# The all-to-all exchanges (differentiable: the backward of one is the other)
# ---------------------------------------------------------------------------------------------


# Word sizes (bytes) and dtypes that a permuting copy can move its rows in, widest first.
_WORDS = ((16, torch.complex128), (8, torch.int64), (4, torch.int32))


def _row_word(x: torch.Tensor) -> torch.dtype | None:
    """The widest word dtype that tiles every row of `x` (last dim contiguous) and that its
    offset and strides keep aligned; None when none is wider than an element."""
    if x.stride(-1) != 1:
        return None
    size = x.element_size()
    byte_counts = [x.shape[-1] * size, x.storage_offset() * size]
    byte_counts += [s * size for s in x.stride()[:-1]]
    for word, dtype in _WORDS:
        if word > size and all(b % word == 0 for b in byte_counts):
            return dtype
    return None


def _contiguous_by_rows(x: torch.Tensor) -> torch.Tensor:
    """`x.contiguous()` for a permuted view, moving each row in the widest word `_row_word`
    allows instead of element by element: PyTorch copies a permuted bf16 tensor one 2-byte
    element per thread, at about a quarter of the memory bandwidth (0.25 ms per 134 MB tensor
    on an H200, benchmarks/NOTES.md, session 6)."""
    word = None if x.is_contiguous() else _row_word(x)
    if word is None:
        return x.contiguous()
    return x.view(word).contiguous().view(x.dtype)


def _exchange(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """all_to_all_single over dim 0, which must have one slice per process."""
    # Contiguous first: empty_like copies the strides of a permuted view, but the collective
    # reads and writes flat memory.
    x = _contiguous_by_rows(x)
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


# The slices travel token-major, (P, B, n, heads, D): with B = 1 the received chunks, in rank
# order, are then the whole sequence in (N, H/P, D) order already, so the head-sharded q, k, v
# are views (in the bnhd layout, which the SLA kernels read through strides and whose layout
# their output keeps) and that output goes back without another copy. Head-major slices
# needed a permuting copy of every tensor on each side (4 more copies of a full tensor per
# attention call).


def _seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    p = dist.get_world_size(group)
    # (B, H, n, D) → (P, B, n, H/P, D): slice j of the heads goes to process j.
    send = rearrange(x, "b (p h) n d -> p b n h d", p=p)
    recv = _exchange(send, group)  # slice i now holds sequence chunk i (from process i)
    return rearrange(recv, "p b n h d -> b h (p n) d")


def _heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    p = dist.get_world_size(group)
    # (B, H/P, N, D) → (P, B, N/P, H/P, D): sequence chunk j goes back to process j.
    send = rearrange(x, "b h (p n) d -> p b n h d", p=p)
    recv = _exchange(send, group)  # slice i now holds head group i (from process i)
    return rearrange(recv, "p b n h d -> b (p h) n d")


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _heads_to_seq(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _seq_to_heads(grad, ctx.group), None


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H, N/P, D) sequence chunk of this process → (B, H/P, N, D) its heads, all tokens."""
    check_heads(x.shape[1], dist.get_world_size(group))
    return _SeqToHeads.apply(x, group)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H/P, N, D) → (B, H, N/P, D); the inverse of `seq_to_heads`."""
    p = dist.get_world_size(group)
    if x.shape[2] % p:
        raise ValueError(f"sequence length {x.shape[2]} is not divisible by the group size {p}")
    return _HeadsToSeq.apply(x, group)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_fn: AttentionFn,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """Attention over a sequence sharded on `group`: q, k, v (B, H, N/P, D) hold this process's
    chunk (chunks in rank order make up the sequence); returns this chunk's output (B, H, N/P, D).

    `attention_fn(q, k, v)` runs on full-length (B, H/P, N, D) tensors, so any attention that
    treats heads independently (dense, SLA with a per-head-shared projection) gives the same
    result as on one process. Without a group (or a group of one) it is just `attention_fn`.
    """
    if group_size(group) == 1:
        return attention_fn(q, k, v)
    q, k, v = (seq_to_heads(t, group) for t in (q, k, v))
    return heads_to_seq(attention_fn(q, k, v), group)


# ---------------------------------------------------------------------------------------------
# Ring collectives (ring attention: `slatte.parallel.ring`)
# ---------------------------------------------------------------------------------------------


def shard_lengths(n_local: int, group: dist.ProcessGroup, device: torch.device) -> list[int]:
    """The sequence lengths every process of `group` holds, in group-rank order (chunks in that
    order make up the sequence)."""
    mine = torch.tensor([n_local], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return [int(p) for p in parts]


def ring_shift(send: torch.Tensor, recv: torch.Tensor, group: dist.ProcessGroup) -> list[dist.Work]:
    """Start sending `send` to the next process of `group` (group rank + 1, wrapping) and
    receiving the previous one's into `recv`; returns the requests to `wait()` on, so that the
    caller computes on the blocks in hand meanwhile."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    nxt = dist.get_global_rank(group, (rank + 1) % size)
    prev = dist.get_global_rank(group, (rank - 1) % size)
    # One batch: NCCL queues separate sends and receives on one stream, where every process's
    # send would wait for a receive queued behind its neighbour's send.
    return dist.batch_isend_irecv(
        [
            dist.P2POp(dist.isend, send.contiguous(), nxt, group=group),
            dist.P2POp(dist.irecv, recv, prev, group=group),
        ]
    )


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every process's output is the sum of every input: each input's gradient is the sum of
        # every output's gradient.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """The sum of `x` over `group`, on every process; differentiable."""
    return _AllReduceSum.apply(x, group)


__all__ = [
    "all_reduce_sum",
    "check_heads",
    "group_size",
    "heads_to_seq",
    "ring_shift",
    "seq_to_heads",
    "shard_lengths",
    "ulysses_attention",
]
