"""Launchers of the Triton kernels behind the SLA block map (`block_map.py`): the pooling of q
and k, the classification and the backward's transposed lists."""

from __future__ import annotations

import torch
import triton

from .kernels_block_lists import transpose_lists_kernel
from .kernels_block_map import classify_kernel
from .kernels_block_pool import pool_qk_kernel
from .launch import launch


def pool_qk(
    q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mean_pool` of q and of k in one launch: fp32 (B, H, Nq, D) and (B, H, Nk, D),
    contiguous (the matmul takes them, and kb transposed, as they are)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    nb_q, nb_k = triton.cdiv(n_q, block_q), triton.cdiv(n_k, block_k)
    qb = torch.empty(b, h, nb_q, d, dtype=torch.float32, device=q.device)
    kb = torch.empty(b, h, nb_k, d, dtype=torch.float32, device=k.device)
    block_d = triton.next_power_of_2(d)
    # One warp per block, 2,048 elements a step: with more warps the partial sums meet in
    # shared memory (slower).
    chunk = min(triton.next_power_of_2(max(block_q, block_k)), max(1, 2048 // block_d))
    if b * h and max(nb_q, nb_k):
        launch(
            pool_qk_kernel, (max(nb_q, nb_k), b * h, 2),
            q, k, qb, kb, *q.stride(), *k.stride(),
            h, n_q, n_k, block_q, block_k, nb_q, nb_k, d,
            CHUNK=chunk, BLOCK_D=block_d, num_warps=1, num_stages=1,
        )  # fmt: skip
    return qb, kb


def _launch_shape(n_rows: int, block: int, on_gpu: bool) -> tuple[int, int]:
    """(rows per program, warps per program)."""
    if not on_gpu:
        # Triton's interpreter pays per operation, not per element: one program takes many rows.
        return min(1 << max(n_rows - 1, 0).bit_length(), max(1, 16384 // block)), 1
    # One row per program, on 1 warp up to 512 columns (its counts stay in the warp), else 4:
    # the fastest on an H100.
    return 1, 1 if block <= 512 else 4


def classify_blocks(
    scores: torch.Tensor, n_crit: int, n_negl: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n_blocks = scores.shape[-1]
    rows = scores.reshape(-1, n_blocks).contiguous()
    bmap = torch.empty(scores.shape, dtype=torch.int8, device=scores.device)
    lut = torch.empty(*scores.shape[:-1], n_crit, dtype=torch.int32, device=scores.device)
    n_rows = rows.shape[0]
    block = triton.next_power_of_2(n_blocks)
    per_program, warps = _launch_shape(n_rows, block, scores.is_cuda)
    if n_rows:
        launch(
            classify_kernel, (triton.cdiv(n_rows, per_program),),
            rows, bmap, lut, n_rows, n_blocks, n_crit, n_negl,
            ROWS=per_program, BLOCK=block, num_warps=warps, num_stages=3,
        )  # fmt: skip
    return bmap, lut


def transpose_lists(lut: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    *batch, n_rows, n = lut.shape
    lists = lut.reshape(-1, n_rows * n).contiguous()  # (B, H, R, n) -> (heads, R * n)
    heads = lists.shape[0]
    rows = torch.empty(*batch, n_rows * n, dtype=torch.int32, device=lut.device)
    starts = torch.empty(*batch, n_cols + 1, dtype=torch.int32, device=lut.device)
    # 64 columns per program: at 512 columns and 12 heads about one program per SM. Each
    # program reads all its head's entries, so wider tiles would only pay off for lists much
    # longer than a few percent of the columns.
    cols = 64
    tiles = triton.cdiv(n_cols + 1, cols)
    member = torch.empty(heads * tiles, n_rows, cols, dtype=torch.int8, device=lut.device)
    if heads:
        launch(
            transpose_lists_kernel, (tiles, heads),
            lists, rows, starts, member, n_rows, n, n_cols,
            COLS=cols, ROW_TILE=64, ENTRY_TILE=2048, num_warps=4, num_stages=1,
        )  # fmt: skip
    return rows, starts
