"""`sparse_linear_attention(..., return_lse=True)`: the sparse branch's log-sum-exp over each
query's critical keys, natural log, (B, H, N) in both layouts, from every kernel family that runs
on the CPU ("triton" through Triton's interpreter), against a float64 computation written from
the block map here (tests/ops/sla_check.py). The "hopper" family's is checked on the GPU
(test_sla_hopper_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy, op
from slatte.ops.triton_interpreter import triton_interpreting

from .sla_check import check_lse, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Ragged both ways (N past the last query and key block), blocks of two sizes.
CONFIG = SLAConfig(critical=0.25, negligible=0.25, block_q=32, block_k=16)
FAMILIES = [
    "reference",
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            DEVICE == "cpu" and not triton_interpreting(),
            reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
        ),
    ),
]


def _run(kernels, inputs, layout, **kw):
    policy = LaunchPolicy(kernels=kernels, poison_outputs=True)
    return sparse_linear_attention(*inputs, CONFIG, layout=layout, policy=policy, **kw)


@pytest.mark.parametrize("kernels", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("n", [1, 65, 200])
def test_lse_is_the_log_sum_exp_over_the_critical_keys(kernels, dtype, layout, n):
    inputs = make_inputs(2, 3, n, 32, dtype, DEVICE, seed=n)
    if layout == "bnhd":
        inputs = (*(x.transpose(1, 2).contiguous() for x in inputs[:3]), *inputs[3:])
    with torch.no_grad():
        out, lse = _run(kernels, inputs, layout, return_lse=True)
        plain = _run(kernels, inputs, layout)
    assert lse.dtype == torch.float32
    check_lse(lse, *inputs[:2], CONFIG, layout)
    # The output is the op's own inference output, laid out like q: storing the LSE changes
    # nothing else (no sums to the backward's accuracy, as `store_aux` would take).
    torch.testing.assert_close(out, plain, atol=0, rtol=0)


@pytest.mark.parametrize("kernels", FAMILIES)
def test_lse_without_the_linear_branch(kernels):
    q, k, v, _, _ = make_inputs(1, 2, 100, 32, torch.float32, DEVICE, seed=3)
    with torch.no_grad():
        out, lse = _run(kernels, (q, k, v, None, None), "bhnd", return_lse=True)
    check_lse(lse, q, k, CONFIG)
    torch.testing.assert_close(out, _run("reference", (q, k, v, None, None), "bhnd"))


@pytest.mark.parametrize("kernels", ["reference", "torch"])
def test_float64_lse_is_float64_and_exact(kernels):
    inputs = make_inputs(1, 2, 77, 16, torch.float64, "cpu", seed=5)
    out, lse = _run(kernels, inputs, "bhnd", return_lse=True)
    assert lse.dtype == torch.float64
    check_lse(lse, *inputs[:2], CONFIG)


@pytest.mark.parametrize("kernels", FAMILIES)
@pytest.mark.parametrize("needs_grad", ["q", "proj_weight"])
def test_return_lse_with_gradients_is_refused(kernels, needs_grad):
    inputs = list(make_inputs(1, 2, 40, 32, torch.float32, DEVICE, seed=2))
    index = {"q": 0, "proj_weight": 3}[needs_grad]
    inputs[index] = inputs[index].requires_grad_()
    with pytest.raises(ValueError, match=r"return_lse=True is for inference.*torch\.no_grad"):
        _run(kernels, inputs, "bhnd", return_lse=True)
    with torch.no_grad():
        _run(kernels, inputs, "bhnd", return_lse=True)  # the same call, for inference


@pytest.mark.parametrize("kernels", FAMILIES)
def test_return_lse_compiles_without_graph_breaks(kernels):
    """Joint SLA runs it inside compiled models: the unit conversion is no graph break."""
    inputs = make_inputs(1, 2, 48, 32, torch.float32, DEVICE, seed=7)
    policy = LaunchPolicy(kernels=kernels)

    def f(*xs):
        return sparse_linear_attention(*xs, CONFIG, policy=policy, return_lse=True)

    with torch.no_grad():
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*inputs)
        for got, want in zip(compiled, f(*inputs), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_store_lse_keeps_the_lse_alone(dtype):
    """The op's `store_lse` (what `return_lse` runs): the LSE `store_aux` keeps, and none of the
    backward's state (o_s, o_l, den, the linear sums)."""
    q, k, v, w, bias = make_inputs(2, 3, 100, 32, dtype, DEVICE, seed=11)
    switches = LaunchPolicy(kernels="triton", poison_outputs=True).switches
    args = (q, k, v, w, bias, 1, 1, 32, 16, "softmax", "marginal", 32**-0.5)
    with torch.no_grad():
        training = op.sla_fwd(*args, True, False, "triton", switches)
        lse_only = op.sla_fwd(*args, False, True, "triton", switches)
        plain = op.sla_fwd(*args, False, False, "triton", switches)
    names = ("o", "bmap", "crit_lut", "o_s", "o_l", "lse", "den", "hsum", "hsum_lo", "zsum")
    state = dict(zip(names, lse_only, strict=True))
    assert training[5].shape == (2, 3, 100)
    torch.testing.assert_close(state["lse"], training[5], atol=0, rtol=0)
    for name in ("o_s", "o_l", "den", "hsum", "hsum_lo", "zsum"):
        assert state[name].numel() == 0, f"{name} kept: {tuple(state[name].shape)}"
    assert plain[5].numel() == 0
    torch.testing.assert_close(state["o"], plain[0], atol=0, rtol=0)
