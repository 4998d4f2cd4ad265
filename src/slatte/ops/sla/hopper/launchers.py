"""Launchers of the "hopper" kernel family: the Triton family's forward and backward with
FlashAttention-4's block-sparse kernels as their sparse branch (`fa4.py`)."""

from __future__ import annotations

import functools

from ..triton import launchers as triton_launchers
from ..triton.launchers import (
    SparseBranch,
    bf16_pairs,
    empty_aux,
    has_linear,
    pair_dtype,
    shared_sums,
)
from .fa4 import sparse_backward, sparse_forward

FA4_SPARSE = SparseBranch(sparse_forward, sparse_backward)
# FlashAttention-4 writes the sparse branch's log-sum-exp as a natural log (`fa4.py`); the
# Triton kernels around it (`sla_epilogue_kernel`, the backward's `SPARSE_DONE`) leave it as it is.
LSE_TO_NATURAL = 1.0

forward = functools.partial(triton_launchers.forward, sparse_branch=FA4_SPARSE)
backward = functools.partial(triton_launchers.backward, sparse_branch=FA4_SPARSE)

__all__ = [
    "LSE_TO_NATURAL",
    "backward",
    "bf16_pairs",
    "empty_aux",
    "forward",
    "has_linear",
    "pair_dtype",
    "shared_sums",
]
