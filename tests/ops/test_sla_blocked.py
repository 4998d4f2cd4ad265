"""The block-sparse PyTorch path ("torch" kernels) against the reference: forward and every
gradient, in float64 (same blocks, so they agree to rounding), over awkward sizes."""

from __future__ import annotations

import pytest
import torch

from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.launch_policy import select_kernels

TORCH = LaunchPolicy(kernels="torch")
REFERENCE = LaunchPolicy(kernels="reference")


def _outputs_and_grads(policy, xs, config, layout):
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    out = sparse_linear_attention(*leaves, config=config, layout=layout, policy=policy)
    out.backward(
        torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    )
    return [out.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize(
    "n,d,block_q,block_k,critical,negligible,scope,feature",
    [
        (1, 16, 16, 16, 0.05, 0.10, "marginal", "softmax"),
        (65, 32, 64, 64, 0.05, 0.10, "marginal", "softmax"),  # a one-row last block
        (200, 16, 32, 16, 0.25, 0.25, "noncritical", "elu"),  # ragged, blocks of two sizes
        (130, 32, 16, 128, 1, 0, "all", "relu"),  # a count; key blocks wider than query blocks
        (96, 16, 32, 16, 1.0, 0.0, "marginal", "softmax"),  # all critical: empty linear branch
        (150, 16, 128, 32, 0.2, 0.7, "marginal", "softmax"),  # few marginal blocks
    ],
)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_matches_the_reference(
    n, d, block_q, block_k, critical, negligible, scope, feature, layout
):
    g = torch.Generator().manual_seed(n + d)
    shape = (2, 3, n, d) if layout == "bhnd" else (2, n, 3, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    bias = torch.randn(d, generator=g, dtype=torch.float64)
    config = SLAConfig(critical, negligible, block_q, block_k, feature, scope)
    for xs in ((q, k, v, w, bias), (q, k, v)):  # with and without the linear branch
        got = _outputs_and_grads(TORCH, xs, config, layout)
        want = _outputs_and_grads(REFERENCE, xs, config, layout)
        for name, a, b in zip(("out", "dq", "dk", "dv", "dw", "db"), got, want, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_half_precision_is_as_close_as_the_reference():
    """bf16 inputs: the blocked path's error against a float64 truth is no worse than about
    twice the reference's own bf16 error (DESIGN.md's rule)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 150, 32, generator=g) for _ in range(3))
    w, bias = torch.randn(32, 32, generator=g) / 32**0.5, torch.randn(32, generator=g)
    config = SLAConfig(0.25, 0.25, 32, 16)
    truth = sparse_linear_attention(
        *(x.double() for x in (q, k, v, w, bias)), config, policy=REFERENCE
    )
    low = [x.bfloat16() for x in (q, k, v)] + [w, bias]
    err_ref = (sparse_linear_attention(*low, config, policy=REFERENCE).double() - truth).abs().max()
    err_blk = (sparse_linear_attention(*low, config, policy=TORCH).double() - truth).abs().max()
    assert err_blk <= 2 * err_ref + 1e-3, (float(err_blk), float(err_ref))


def test_auto_takes_it_off_cuda():
    q = torch.randn(1, 1, 40, 16)
    for training in (False, True):
        assert select_kernels(q, LaunchPolicy(), (64, 64), training) == "torch"
        assert select_kernels(q, REFERENCE, (64, 64), training) == "reference"


def test_a_forced_hopper_family_off_cuda_is_an_error():
    q = torch.randn(1, 1, 40, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="kernels='hopper' needs a CUDA tensor"):
        select_kernels(q, LaunchPolicy(kernels="hopper"), (128, 128), False)
