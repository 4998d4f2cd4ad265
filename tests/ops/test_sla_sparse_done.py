"""The Triton kernels with the sparse branch run elsewhere, as the hopper family runs them around
FlashAttention-4: here a plain PyTorch sparse branch plays FA4's part, so the kernels'
linear-branch-only paths (the persistent forward epilogue and inference sums, SPARSE_DONE in dq
and dk/dv) are checked on the CPU through Triton's interpreter, forward and every gradient. FA4
itself is checked on the GPU grid (test_sla_hopper_gpu.py)."""

from __future__ import annotations

import math

import pytest
import torch

from slatte.ops import SLAConfig
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.block_map import CRITICAL, block_scores, classify
from slatte.ops.sla.config import block_counts
from slatte.ops.sla.reference import expand_blocks, sparse_branch
from slatte.ops.sla.triton import launch, launchers
from slatte.ops.sla.triton.launch import INTERPRETER_SMS
from slatte.ops.sla.triton.launchers import SparseBranch
from slatte.ops.triton_interpreter import triton_interpreting

from .sla_check import check_sla, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


def _reference_sparse(q, k, v, bmap, block_q, block_k, scale):
    tokens = expand_blocks(bmap == CRITICAL, q.shape[2], block_q, block_k)
    return sparse_branch(q.float(), k.float(), v.float(), tokens, scale)[0]


def _forward(q, k, v, crit_lut, bmap, block_q, block_k, scale, o_s, lse):
    o_s.copy_(_reference_sparse(q, k, v, bmap, block_q, block_k, scale))
    lse.zero_()  # (read by nobody but this branch's backward, which recomputes)


def _backward(do, q, k, v, o_s, lse, crit_lut, bmap, block_q, block_k, scale, dq, dk, dv):
    with torch.enable_grad():
        xs = [x.detach().float().requires_grad_() for x in (q, k, v)]
        _reference_sparse(*xs, bmap, block_q, block_k, scale).backward(do.float())
    for dst, x in zip((dq, dk, dv), xs, strict=True):
        dst.copy_(x.grad)


REFERENCE_SPARSE = SparseBranch(_forward, _backward)


class _SparseDone(torch.autograd.Function):
    """The launchers' forward and backward with REFERENCE_SPARSE, outside the registered op."""

    @staticmethod
    def forward(ctx, q, k, v, w, bias, config, policy, store_aux):
        n_crit, n_negl = block_counts(
            config.critical, config.negligible, -(-q.shape[2] // config.block_k)
        )
        opts = (n_crit, n_negl, config.block_q, config.block_k, config.feature_map,
                config.linear_scope, 1.0 / math.sqrt(q.shape[-1]))  # fmt: skip
        o, *saved = launchers.forward(
            q, k, v, w, bias, *opts, store_aux, False, policy, sparse_branch=REFERENCE_SPARSE
        )
        ctx.save_for_backward(q, k, v, w, *saved)
        ctx.opts, ctx.policy = opts, policy
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, w, *saved = ctx.saved_tensors
        dq, dk, dv, dw, db = launchers.backward(
            do, q, k, v, w, True, *saved, *ctx.opts, ctx.policy, sparse_branch=REFERENCE_SPARSE
        )
        return dq, dk, dv, dw, db, None, None, None


def sparse_done(q, k, v, w, bias, config, layout, policy):
    t = (lambda x: x.transpose(1, 2)) if layout == "bnhd" else (lambda x: x)
    # Without gradients the inference forward (no saved state, rounded sums), as the op takes it.
    store_aux = torch.is_grad_enabled()
    return t(
        _SparseDone.apply(t(q), t(k), t(v), w.float(), bias.float(), config, policy, store_aux)
    )


@pytest.mark.parametrize(
    "n, d, dtype, scope, layout, negligible",
    [
        (65, 32, torch.float32, "marginal", "bhnd", 0.25),
        (200, 64, torch.float16, "all", "bnhd", 0.25),
        (777, 32, torch.float32, "all", "bhnd", 0.25),  # shared sums over 4 ragged chunks
        (130, 32, torch.float16, "noncritical", "bhnd", 0.25),
        # No marginal block (5 key blocks: 1 critical, 4 negligible): no linear branch, but the
        # projection's bias is still added.
        (70, 32, torch.float32, "marginal", "bhnd", 4),
    ],
)
def test_linear_branch_around_another_sparse_branch(n, d, dtype, scope, layout, negligible):
    config = SLAConfig(
        critical=0.25, negligible=negligible, block_q=32, block_k=16, linear_scope=scope
    )
    check_sla(
        *make_inputs(1, 2, n, d, dtype, DEVICE, seed=n, layout=layout),
        config,
        layout=layout,
        fast=sparse_done,
    )


def test_sparse_done_uses_the_given_sparse_branch():
    """A sparse branch that writes zeros must change the output: the kernels read O_s."""
    q, k, v, w, bias = make_inputs(1, 2, 65, 32, torch.float32, DEVICE, seed=5)
    zero = SparseBranch(lambda *a: (a[-2].zero_(), a[-1].zero_()), _backward)
    n_crit, n_negl = block_counts(0.25, 0.25, 5)
    opts = (n_crit, n_negl, 32, 16, "softmax", "marginal", 32**-0.5, False, False)
    policy = LaunchPolicy(poison_outputs=True)
    real = launchers.forward(q, k, v, w, bias, *opts, policy, sparse_branch=REFERENCE_SPARSE)[0]
    fake = launchers.forward(q, k, v, w, bias, *opts, policy, sparse_branch=zero)[0]
    bmap = classify(block_scores(q, k, 32, 16), n_crit, n_negl)[0]
    expected_o_s = _reference_sparse(q, k, v, bmap, 32, 16, 32**-0.5)
    torch.testing.assert_close(real - fake, expected_o_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "d, layout, grads, overrides",
    [
        # 3 programs (one per interpreter SM): 14 query tiles (5, 5, 4 each, the last ragged),
        # inference's 26 per-key-block sums (9, 9, 8)
        (40, "bnhd", False, {"epi_programs_per_sm": 1, "sums_programs_per_sm": 1}),
        (64, "bhnd", False, {"epi_programs_per_sm": 1, "sums_programs_per_sm": 1}),
        # O_l in 16-column chunks (three: lanes 48-63 are padding), each stored for training
        (40, "bhnd", True, {"epi_programs_per_sm": 1, "epi_lin_chunk": 16}),
        (64, "bnhd", True, {"epi_programs_per_sm": 1}),
        # 16-row tiles, two per query block: 26 tiles over 6 programs
        (40, "bhnd", False, {"epi_m": 16, "epi_programs_per_sm": 2, "sums_programs_per_sm": 4}),
        # more programs per SM than tiles: one tile each
        (64, "bnhd", True, {"epi_programs_per_sm": 100}),
    ],
)
def test_persistent_programs_take_several_tiles(monkeypatch, d, layout, grads, overrides):
    """The forward's linear epilogue (`sla_epilogue_kernel`) and, without gradients, the
    per-key-block sums (`block_outer_kernel` with PERSIST) run on a persistent grid: each
    program goes through every programs-th work item. Outputs are poisoned, so a tile or block
    that no program takes fails; head dims 40 (padded to 64 lanes) and 64, both layouts,
    N = 200 (a ragged last tile), training and inference."""
    # The interpreter's few "SMs" on every device, so that programs take several tiles on a GPU too.
    monkeypatch.setattr(launch, "sm_count", lambda device: INTERPRETER_SMS)
    grids = []
    size = launchers.persistent_grid

    def spy(items, device, per_sm):
        grids.append((items, size(items, device, per_sm)[0]))
        return (grids[-1][1],)

    monkeypatch.setattr(launchers, "persistent_grid", spy)
    config = SLAConfig(critical=0.25, negligible=0.25, block_q=32, block_k=16)
    check_sla(
        *make_inputs(1, 2, 200, d, torch.float32, DEVICE, seed=d, layout=layout),
        config,
        layout=layout,
        grads=grads,
        policy=LaunchPolicy(tile_overrides={d: overrides}),
        fast=sparse_done,
    )
    per_sm = overrides["epi_programs_per_sm"]
    tiles = 2 * -(-200 // overrides.get("epi_m", 32))
    expected = [(tiles, min(tiles, per_sm * INTERPRETER_SMS))]
    if not grads:  # (the training forward's exact sums keep one program per block)
        blocks = 2 * -(-200 // 16)
        expected.insert(
            0, (blocks, min(blocks, overrides["sums_programs_per_sm"] * INTERPRETER_SMS))
        )
    assert grids == expected


@pytest.mark.parametrize(
    "overrides",
    [
        # tune_sla.py's HOPPER_TRAIN candidates: the linear-only dq and dk/dv kernels on the
        # tiles it times for the hopper family (128 x 128 blocks), checked before they are timed
        {"dq_m": 128, "dq_warps": 8, "dq_stages": 1},
        {"dq_m": 128, "dq_warps": 4, "dq_stages": 1},
        {"dkdv_n": 128, "dkdv_warps": 8},
        {"dkdv_n": 128, "dkdv_warps": 4},
    ],
)
def test_hopper_training_tile_candidates(overrides):
    config = SLAConfig(critical=0.34, negligible=0.0, block_q=128, block_k=128)
    check_sla(
        *make_inputs(1, 2, 300, 32, torch.float32, DEVICE, seed=11),
        config,
        policy=LaunchPolicy(tile_overrides={32: overrides}),
        fast=sparse_done,
    )
