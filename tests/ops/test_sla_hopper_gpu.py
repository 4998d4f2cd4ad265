"""The GPU grid for the "hopper" kernel family (FlashAttention-4's block-sparse kernels for the
sparse branch, the Triton kernels for the block map and the linear branch).

Runs on a Hopper GPU with `flash-attn-4` installed (the `slatte[hopper]` extra); skipped
elsewhere. The same awkward sizes and rule as the Triton grid (tests/ops/sla_check.py): forward
and every gradient against the float64 reference, with 128 x 128 blocks (the family's training
shape), and the forward alone with 128 x 64 blocks.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.hopper.fa4 import fa4_version

from .sla_check import check_lse, check_sla, make_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available()
        or torch.cuda.get_device_capability()[0] != 9
        or fa4_version() is None,
        reason="needs a Hopper GPU and flash-attn-4",
    ),
]

NS = (1, 65, 1000, 4096, 32760, 75600)
FULL_ROWS_UP_TO = 4096
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CASES = [
    (n, d, dtype, scope, feature)
    for n, d, dtype in itertools.product(NS, (64, 128), ("bf16", "fp16"))
    for scope, feature in (
        itertools.product(("marginal", "noncritical", "all"), ("softmax", "elu", "relu"))
        if n in (65, 4096)
        else [("marginal", "softmax")]
    )
]


def _rows(n: int, block_q: int):
    if n <= FULL_ROWS_UP_TO:
        return None
    n_q = -(-n // block_q)
    starts = (0, (n_q // 2) * block_q, (n_q - 1) * block_q)
    return torch.cat([torch.arange(s, min(s + block_q, n)) for s in starts]).cuda()


@pytest.mark.parametrize("n,d,dtype,scope,feature", CASES)
def test_grid(n, d, dtype, scope, feature):
    heads = 2 if n <= FULL_ROWS_UP_TO else 1
    inputs = make_inputs(1, heads, n, d, DTYPES[dtype], "cuda", seed=n + d)
    config = SLAConfig(block_q=128, block_k=128, feature_map=feature, linear_scope=scope)
    check_sla(*inputs, config, rows=_rows(n, 128), kernels="hopper")


@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("n,d,dtype", [(65, 64, "bf16"), (4096, 128, "fp16"), (32760, 128, "bf16")])
def test_forward_with_64_row_key_blocks(n, d, dtype, layout):
    inputs = make_inputs(1, 2, n, d, DTYPES[dtype], "cuda", seed=n, layout=layout)
    config = SLAConfig(block_q=128, block_k=64)
    check_sla(*inputs, config, layout=layout, rows=_rows(n, 128), grads=False, kernels="hopper")


def test_strided_layout_with_gradients():
    inputs = make_inputs(2, 3, 777, 128, torch.bfloat16, "cuda", seed=7, layout="bnhd")
    check_sla(*inputs, SLAConfig(block_q=128, block_k=128), layout="bnhd", kernels="hopper")


@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize(
    "n,d,dtype,blocks", [(65, 64, "bf16", (128, 128)), (4096, 128, "fp16", (128, 64))]
)
def test_return_lse_is_a_natural_log(n, d, dtype, blocks, layout):
    """FA4 writes the sparse branch's LSE as a natural log; the op passes it on as such."""
    q, k, v, w, bias = make_inputs(1, 2, n, d, DTYPES[dtype], "cuda", seed=n, layout=layout)
    config = SLAConfig(block_q=blocks[0], block_k=blocks[1])
    policy = LaunchPolicy(kernels="hopper", poison_outputs=True)
    with torch.no_grad():
        _, lse = sparse_linear_attention(
            q, k, v, w, bias, config, layout=layout, policy=policy, return_lse=True
        )
    check_lse(lse, q, k, config, layout)
