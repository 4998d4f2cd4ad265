"""Triton kernel that transposes the critical-block lists: from each query block's key blocks
(the forward's LUT) to each key block's query blocks (what the backward's dk/dv programs walk),
as `block_map.transpose_lists`' torch sort builds them, in one launch instead of about ten.

Column j's rows, ascending, start at starts[j] = the number of list entries below j, and row i
sits at starts[j] + (the rows before i that hold j). Both counts come from the 0/1 membership
of each (row, column), written to a scratch slice of the program's columns and read back:
Triton has no scatter into registers, and a dense membership tile makes the second count a
cumulative sum down the rows.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["R", "N", "N_COLS"])
def transpose_lists_kernel(
    LUT,
    ROWS_OUT,
    STARTS,
    MEMBER,
    R,
    N,
    N_COLS,
    COLS: tl.constexpr,
    ROW_TILE: tl.constexpr,
    ENTRY_TILE: tl.constexpr,
):
    """Grid (cdiv(N_COLS + 1, COLS), heads): program (t, bh) fills STARTS[bh, j] for its COLS
    columns j <= N_COLS, and ROWS_OUT[bh] where its columns' rows go.

    LUT: (heads, R, N) contiguous, each row N distinct ascending columns in [0, N_COLS);
    ROWS_OUT: int32 (heads, R * N); STARTS: int32 (heads, N_COLS + 1); MEMBER: int8 scratch,
    (heads * tiles, R, COLS), one slice per program (its contents on entry do not matter).
    """
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    first_col = tile * COLS
    cols = tl.arange(0, COLS)
    lists = LUT + bh * R * N
    member = MEMBER + (bh * tl.num_programs(0) + tile) * R * COLS

    for r in range(0, R, ROW_TILE):
        rows = r + tl.arange(0, ROW_TILE)
        tl.store(
            member + rows[:, None] * COLS + cols[None, :],
            tl.zeros([ROW_TILE, COLS], dtype=tl.int8),
            mask=(rows < R)[:, None],
        )
    # The zeros must land before any thread marks a member over them.
    tl.debug_barrier()

    # One pass over all the entries: those below the tile's columns count towards its first
    # start; those in it mark their (row, column).
    below = tl.zeros([ENTRY_TILE], dtype=tl.int32)
    for e in range(0, R * N, ENTRY_TILE):
        idx = e + tl.arange(0, ENTRY_TILE)
        ok = idx < R * N
        col = tl.load(lists + idx, mask=ok, other=0)
        below += (ok & (col < first_col)).to(tl.int32)
        mine = ok & (col >= first_col) & (col < first_col + COLS)
        tl.store(member + (idx // N) * COLS + (col - first_col), 1, mask=mine)
    # The marks must land before any thread reads them back.
    tl.debug_barrier()

    counts = tl.zeros([COLS], dtype=tl.int32)
    for r in range(0, R, ROW_TILE):
        rows = r + tl.arange(0, ROW_TILE)
        m = tl.load(
            member + rows[:, None] * COLS + cols[None, :], mask=(rows < R)[:, None], other=0
        )
        counts += tl.sum(m.to(tl.int32), axis=0)
    # Exclusive: column j starts after the columns before it. The tile holding column N_COLS
    # writes the end, R * N (no column at or past N_COLS has entries).
    starts = tl.sum(below, axis=0) + tl.cumsum(counts, axis=0) - counts
    tl.store(STARTS + bh * (N_COLS + 1) + first_col + cols, starts, mask=first_col + cols <= N_COLS)

    # Each member row's place in its column: the start, then the member rows above it.
    seen = starts
    for r in range(0, R, ROW_TILE):
        rows = r + tl.arange(0, ROW_TILE)
        m = tl.load(
            member + rows[:, None] * COLS + cols[None, :], mask=(rows < R)[:, None], other=0
        )
        m = m.to(tl.int32)
        place = seen[None, :] + tl.cumsum(m, axis=0) - m
        tl.store(
            ROWS_OUT + bh * R * N + place,
            tl.broadcast_to(rows[:, None], place.shape).to(tl.int32),
            mask=m != 0,
        )
        seen += tl.sum(m, axis=0)
