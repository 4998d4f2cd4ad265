"""FlashAttention-4's block-sparse attention as SLA's sparse branch (spec section 2).

`flash-attn-4` (the `slatte[hopper]` extra) is written in NVIDIA's CuTe DSL and compiled on first
use for each configuration; on Hopper its block-sparse forward and backward run the same
FLOPs as our Triton loop in about 40% less time (benchmarks/NOTES.md). It takes the critical
key blocks of each query block as "full" blocks (no mask inside the block; the ragged last key
block is bounded by the sequence length, which FA4 applies to the first block it visits, the
highest index of each ascending list) and, for the backward, the transposed lists.

Its tensors are (B, N, H, D); ours are (B, H, N, D) tensors that may be strided views, so each is
handed over as a transposed view and FA4 writes its outputs straight into our buffers.
"""

from __future__ import annotations

import functools

import torch

from ..block_map import CRITICAL

# The release these wrappers were written and measured against: the private entry points used
# here (`_flash_attn_fwd`, `_flash_attn_bwd`) change between releases.
FA4_VERSION = "4.0.0b40"
INSTALL_HINT = f"pip install 'slatte[hopper]' (flash-attn-4=={FA4_VERSION})"


@functools.cache
def fa4_version() -> str | None:
    """The installed flash-attn-4 release, or None when it cannot be imported."""
    try:
        from importlib.metadata import version

        import flash_attn.cute.interface  # noqa: F401  (imports the CuTe DSL too)

        return version("flash-attn-4")
    except Exception:  # not installed, or its CuTe DSL libraries are missing / broken
        return None


def _bnhd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # (B, H, N, D) -> (B, N, H, D), a view


def forward_lists(crit_lut: torch.Tensor, block_q: int, block_k: int):
    """FA4's forward block-sparse tensors: each query block's critical key blocks, ascending."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    lut = crit_lut.contiguous()
    count = torch.full(lut.shape[:-1], lut.shape[-1], dtype=torch.int32, device=lut.device)
    return BlockSparseTensorsTorch(
        mask_block_cnt=torch.zeros_like(count), mask_block_idx=lut,
        full_block_cnt=count, full_block_idx=lut, block_size=(block_q, block_k),
    )  # fmt: skip


def backward_lists(bmap: torch.Tensor, block_q: int, block_k: int):
    """FA4's backward block-sparse tensors: for each key block, the query blocks that hold it
    as critical, ascending (a stable sort puts the critical entries of each row first)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    critical = bmap.transpose(-1, -2) == CRITICAL  # (B, H, Nk, Nq)
    count = critical.sum(-1, dtype=torch.int32).contiguous()
    # (contiguous: a sort of the transposed view keeps its strides, FA4 needs unit-stride rows)
    rows = torch.argsort(~critical, dim=-1, stable=True).to(torch.int32).contiguous()
    return BlockSparseTensorsTorch(
        mask_block_cnt=torch.zeros_like(count), mask_block_idx=rows,
        full_block_cnt=count, full_block_idx=rows, block_size=(block_q, block_k),
    )  # fmt: skip


def _into(dst: torch.Tensor, result: torch.Tensor) -> None:
    # FA4 writes into the buffers it is given; should a release hand back a copy, keep it.
    if result.data_ptr() != dst.data_ptr():
        dst.copy_(result)


def sparse_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    crit_lut: torch.Tensor,
    bmap: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    o_s: torch.Tensor,
    lse: torch.Tensor,
) -> None:
    """Writes the sparse branch of (B, H, N, D) q, k, v into o_s (B, H, N, D) and its
    log-sum-exp (natural log) into lse (B, H, N)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse_out, *_ = _flash_attn_fwd(
        _bnhd(q), _bnhd(k), _bnhd(v), softmax_scale=scale,
        block_sparse_tensors=forward_lists(crit_lut, block_q, block_k),
        return_lse=True, out=_bnhd(o_s), lse=lse,
    )  # fmt: skip
    _into(o_s, out.transpose(1, 2))
    _into(lse, lse_out)


def sparse_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o_s: torch.Tensor,
    lse: torch.Tensor,
    crit_lut: torch.Tensor,
    bmap: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
) -> None:
    """Writes the sparse branch's gradients for dO = `do` into dq, dk, dv (B, H, N, D)."""
    from flash_attn.cute.interface import _flash_attn_bwd

    grads = _flash_attn_bwd(
        _bnhd(q), _bnhd(k), _bnhd(v), _bnhd(o_s), _bnhd(do), lse, softmax_scale=scale,
        block_sparse_tensors=backward_lists(bmap, block_q, block_k),
        dq=_bnhd(dq), dk=_bnhd(dk), dv=_bnhd(dv),
    )  # fmt: skip
    for dst, result in zip((dq, dk, dv), grads[:3], strict=True):
        _into(dst, result.transpose(1, 2))
