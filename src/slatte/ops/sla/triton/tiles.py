"""Tile sizes and launch shapes of the SLA attention kernels (chosen by sweeps on an H100; the
measurements are in benchmarks/NOTES.md, "Tile choices, moved from the source")."""

from __future__ import annotations

from typing import NamedTuple

import triton

from ..launch_policy import LaunchPolicy


class MaskTile(NamedTuple):
    """The inference forward's H_i GEMM (`launchers._mask_gemm`): rows x columns on warps, or
    cuBLAS."""

    rows: int
    cols: int
    warps: int
    cublas: bool


def feature_tile(d: int) -> int:
    """The width of the kernels' feature tiles for head dim d: a power of two (`tl.arange`),
    at least 16 (`tl.dot`). Lanes past d are padding in registers (`kernels_common`)."""
    return max(16, triton.next_power_of_2(d))


def tiles(
    d: int,
    block_q: int,
    block_k: int,
    itemsize: int,
    policy: LaunchPolicy,
    pair: bool = False,
    tma: bool = False,
) -> dict[str, int | bool]:
    """Tile sizes and launch shape of each kernel; tiles divide the map's blocks, so a tile has
    one LUT row.

    The dk/dv loop takes one pipeline stage (with two, its tiles leave no shared memory for a
    second CTA per SM). The forward and dq take 128-row tiles on 8 warps where the map's query
    blocks allow (64-row tiles on 8 warps are slow; with fp32 inputs dq's 128 rows need more
    shared memory than an H100 has); with key tiles through TMA (`tma`) both take 64-row tiles
    on 4 warps at D > 64 instead. The key side's linear share is computed in the dk/dv kernel's
    prologue with the bf16 pair (`pair`) at D > 64 or with 128-row query blocks; elsewhere in a
    kernel of its own (with an fp32 dH at D = 128 the prologue's split products spill). The
    forward's linear epilogue goes through O_l's columns 32 at a time at D > 64.
    The inference forward's H_i (`mask_gemm_kernel` over the per-block sums rounded for it) takes
    64 query blocks x 256 of the D x D columns on 8 warps (`mask_*`, `mask_gemm_tile`);
    `mask_cublas` runs it as a batched cuBLAS GEMM with the 0/1 selection as a matrix instead.
    A head dim that is no power of two takes the tiles of its `feature_tile` width (its
    registers and shared memory are those of that width).
    The persistent kernels of the hopper family (`kernels_epilogue`; the inference forward's
    per-block sums, PERSIST in `block_outer_kernel`) take untuned starting points: the
    epilogue the fused forward's epilogue tiles, the sums their grid launch's steps, both with
    two pipeline stages and as many programs per SM as their registers and shared memory allow
    at those stages (sm_90 compile, bf16: the epilogue one at D = 128, two at D = 64; the sums
    one over 128-row blocks at D = 128, else two).
    `policy.tile_overrides[d]` replaces any of these values.
    """
    width = feature_tile(d)
    wide = width > 64
    dq_tall = wide and block_q >= 128 and itemsize <= 2 and not tma
    cfg = {
        "fwd_m": 64 if wide and tma else 128,
        "fwd_n": 64,
        "fwd_warps": 8 if wide and block_q >= 128 and not tma else 4,
        "fwd_stages": 3,
        "fwd_lin_chunk": 32 if wide else width,
        "dq_m": 128 if dq_tall else 64,
        "dq_n": 64,
        "dq_warps": 8 if dq_tall else 4,
        "dq_stages": 2 if wide and not dq_tall else 3,
        "dkdv_m": 64,
        "dkdv_n": 64,
        "dkdv_warps": 4,
        "dkdv_stages": 1,
        "key_linear_prologue": pair and (wide or block_q >= 128),
        "key_linear_n": 32 if wide and not pair else 64,
        "key_linear_warps": 8 if wide and not pair else 4,
        "epi_m": 128,
        "epi_warps": 8 if wide else 4,
        "epi_stages": 2,
        "epi_lin_chunk": 32 if wide else width,
        "epi_programs_per_sm": 1 if wide else 2,
        "sums_programs_per_sm": 1 if wide and block_k >= 128 else 2,
        "sums_stages": 2,
        "mask_r": 64,
        "mask_cols": 256,
        "mask_warps": 8,
        "mask_cublas": False,
    }
    cfg.update(policy.tile_overrides.get(d, {}))
    cfg["fwd_m"], cfg["dq_m"], cfg["dkdv_m"], cfg["epi_m"] = (
        min(cfg[x], block_q) for x in ("fwd_m", "dq_m", "dkdv_m", "epi_m")
    )
    cfg["fwd_n"], cfg["dq_n"], cfg["dkdv_n"], cfg["key_linear_n"] = (
        min(cfg[x], block_k) for x in ("fwd_n", "dq_n", "dkdv_n", "key_linear_n")
    )
    return cfg


def mask_gemm_tile(cfg: dict[str, int | bool]) -> MaskTile:
    """The inference forward's H_i GEMM tile of `tiles`' values."""
    return MaskTile(cfg["mask_r"], cfg["mask_cols"], cfg["mask_warps"], cfg["mask_cublas"])
