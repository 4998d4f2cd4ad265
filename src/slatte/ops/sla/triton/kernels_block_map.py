"""Triton kernel for the block map's classification (spec section 1): per row of pooled scores,
the top `n_crit` and bottom `n_negl` entries, as `block_map.classify`'s stable descending sort
picks them, without sorting.

Each score becomes an unsigned integer key with the order of the floats (only bit operations
and comparisons, no arithmetic on scores, so the choice is bit-identical to the sort). A radix
select finds the n-th largest key T bit by bit, in at most 32 counts over the row; every key
above T is taken, and of the keys equal to T the first ones by index (the sort's tie order)
until n are taken. The bottom n are the top n of the bit-inverted keys, with ties taken from the end.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The widest row the kernel takes in one tile (a power of 2); wider rows go through the sort.
# With 4 warps a thread then holds 32 keys, which already spills a little on sm_90 (still about
# twice as fast as the sort); wider tiles would spill more.
MAX_BLOCK = 4096


@triton.jit
def _order_keys(x):
    """uint32 keys of fp32 x with x's order: a <= b iff key(a) <= key(b) (NaN aside)."""
    # -0.0 == 0.0 for the sort, so both must give one key.
    bits = tl.where(x == 0.0, 0, x.to(tl.uint32, bitcast=True))
    # Negative floats: larger magnitude, larger bits, so flip them all (sign bit clears);
    # non-negative ones: set the sign bit, so they rank above every negative one.
    return tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)


@triton.jit
def _take_top(keys, valid, n, rows_ok, FROM_END: tl.constexpr):
    """Per row of a (ROWS, BLOCK) tile of keys (0 where not `valid`), the n >= 1 largest valid
    keys (bool tile); among keys equal to the n-th largest, the first by column (FROM_END: the
    last)."""
    # The n-th largest key T is the largest t with count(keys >= t) >= n, built from the top
    # bit. Once exactly n keys are >= t the choice is made (the lower bits of T change nothing),
    # so the loop stops there: ~15 of the 32 steps for rows of distinct scores.
    t = tl.zeros([keys.shape[0]], dtype=tl.uint32)
    count = tl.where(rows_ok, tl.sum(valid.to(tl.int32), axis=1), n)  # count(keys >= t) of valid
    bit = tl.full([], 0x80000000, tl.uint32)
    while (bit != 0) & (tl.max(count - n, axis=0) > 0):
        cand = t | bit
        # No valid mask needed: cand >= 1 > the padding's key 0 (a valid key 0 is never >= cand
        # either, and is counted below as a tie of T = 0).
        count_cand = tl.sum((keys >= cand[:, None]).to(tl.int32), axis=1)
        enough = count_cand >= n
        t = tl.where(enough, cand, t)
        count = tl.where(enough, count_cand, count)
        bit = bit >> 1
    above = (keys > t[:, None]) & valid
    tied = (keys == t[:, None]) & valid
    # The tied keys fill, in column order, the places that the keys above T leave. Most rows
    # of distinct scores have one tie and one place: the scan runs only where one row has more.
    room = n - tl.sum(above.to(tl.int32), axis=1)
    n_tied = tl.sum(tied.to(tl.int32), axis=1)
    if tl.max(n_tied - room, axis=0) > 0:
        rank = tl.cumsum(tied.to(tl.int32), axis=1)  # 1-based, counted from the first column
        if FROM_END:
            rank = n_tied[:, None] + 1 - rank
        tied = tied & (rank <= room[:, None])
    return above | tied


@triton.jit(do_not_specialize=["R", "NK", "N_CRIT", "N_NEGL"])
def classify_kernel(
    SCORES,
    MAP,
    LUT,
    R,
    NK,
    N_CRIT,
    N_NEGL,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """ROWS rows of SCORES (R x NK, fp32, contiguous) per program: MAP (int8, R x NK) gets 1 for
    a row's N_CRIT largest scores, -1 for its N_NEGL smallest, 0 elsewhere; LUT (int32,
    R x N_CRIT) the critical columns, ascending. Ties as a stable descending sort: the critical
    ones go to lower columns, the negligible ones to higher columns. N_CRIT >= 1,
    N_CRIT + N_NEGL <= NK <= BLOCK."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    rows_ok = rows < R
    valid = rows_ok[:, None] & (cols[None, :] < NK)
    offs = rows[:, None] * NK + cols[None, :]
    keys = _order_keys(tl.load(SCORES + offs, mask=valid, other=0.0))
    critical = _take_top(tl.where(valid, keys, 0), valid, N_CRIT, rows_ok, FROM_END=False)
    code = critical.to(tl.int8)
    if N_NEGL > 0:
        # The bottom N_NEGL: the top of the inverted keys, ties from the last column backwards
        # (a stable descending sort puts the higher column of two equal scores last).
        inverted = tl.where(valid, ~keys, 0)
        negligible = _take_top(inverted, valid, N_NEGL, rows_ok, FROM_END=True)
        code = tl.where(negligible, -1, code).to(tl.int8)
    tl.store(MAP + offs, code, mask=valid)
    # Each critical column's place in the ascending list: the critical columns before it.
    slot = tl.cumsum(critical.to(tl.int32), axis=1) - 1
    lut_offs = rows[:, None] * N_CRIT + slot
    tl.store(LUT + lut_offs, tl.broadcast_to(cols[None, :], lut_offs.shape), mask=critical)
