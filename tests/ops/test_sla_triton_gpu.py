"""The issue's full GPU grid for the Triton SLA kernels (skipped without CUDA).

N in {1, 65, 1000, 4096, 32760, 75600}, D in {64, 72, 128} (72, the released diffusers Latte's
head dim, on 128-wide tiles with the lanes past 72 masked), block_q in {64, 128}, bf16 and fp16,
forward and every gradient against the reference (tests/ops/sla_check.py). Every scope and
feature map at N in {65, 4096}; the defaults (marginal, softmax) at every N. Sequences too long
for the reference's N x N matrices are checked on three query blocks (first, middle, last).
Run it on the GPU machine with `pytest -n 8 tests/ops/test_sla_triton_gpu.py` (compilation of
the kernel variants dominates; xdist spreads it over the cores).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from slatte.ops import SLAConfig
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.launch_policy import select_kernels

from .sla_check import check_sla, make_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

NS = (1, 65, 1000, 4096, 32760, 75600)
FULL_ROWS_UP_TO = 4096
CASES = [
    (n, d, bq, dtype, scope, feature)
    for n, d, bq, dtype in itertools.product(NS, (64, 72, 128), (64, 128), ("bf16", "fp16"))
    for scope, feature in (
        itertools.product(("marginal", "noncritical", "all"), ("softmax", "elu", "relu"))
        if n in (65, 4096)
        else [("marginal", "softmax")]
    )
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("n,d,block_q,dtype,scope,feature", CASES)
def test_grid(n, d, block_q, dtype, scope, feature):
    heads = 2 if n <= FULL_ROWS_UP_TO else 1
    inputs = make_inputs(1, heads, n, d, DTYPES[dtype], "cuda", seed=n + d + block_q)
    rows = None
    if n > FULL_ROWS_UP_TO:
        n_q = -(-n // block_q)
        starts = (0, (n_q // 2) * block_q, (n_q - 1) * block_q)
        rows = torch.cat([torch.arange(s, min(s + block_q, n)) for s in starts]).cuda()
    config = SLAConfig(block_q=block_q, block_k=64, feature_map=feature, linear_scope=scope)
    check_sla(*inputs, config, rows=rows)


@pytest.mark.parametrize("training", [False, True])
def test_auto_takes_the_fused_kernels_at_head_dim_72(training):
    """The "auto" policy runs D = 72 on the Triton family (Hopper's stays at D in {64, 128})."""
    q = torch.randn(1, 2, 256, 72, device="cuda", dtype=torch.bfloat16)
    assert select_kernels(q, LaunchPolicy(), (128, 128), training) == "triton"
    with pytest.raises(ValueError, match="kernels='hopper'"):
        select_kernels(q, LaunchPolicy(kernels="hopper"), (128, 128), training)
