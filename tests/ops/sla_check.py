"""Checks the Triton SLA path against the reference, with tolerances taken from the data.

The rule (DESIGN.md): the kernel's error against a float64 truth may be at most FACTOR times the
error of the reference run at the kernel's precision, plus a small floor relative to the
truth's magnitude. Forward output and every gradient (q, k, v, projection weight and bias).
The kernel's buffers are poisoned with NaN first, so an element left unwritten fails.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from slatte.ops import SLAConfig, sla_block_map, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.reference import sla_reference

FACTOR = 2.0
# Relative to max|truth|: covers reduction-order noise where the low-precision reference is
# nearly exact (fp32), far below any real bug.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 5e-4}
NAMES = ("out", "dq", "dk", "dv", "dw", "db")


def make_inputs(b, h, n, d, dtype, device, seed=0, layout="bhnd"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (b, h, n, d) if layout == "bhnd" else (b, n, h, d)
    q, k, v = (torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    # A projection large enough that the linear branch weighs as much as the sparse one.
    w = (torch.randn(d, d, generator=g) / d**0.5).to(device)
    bias = torch.randn(d, generator=g).to(device)
    return q, k, v, w, bias


def _bhnd(x, layout):
    return x.transpose(1, 2) if layout == "bnhd" else x


def check_sla(
    q,
    k,
    v,
    w,
    bias,
    config: SLAConfig,
    layout="bhnd",
    rows=None,
    grads=True,
    policy=None,
    kernels="triton",
    fast=sparse_linear_attention,
):
    """Run a fast path and the two references; assert the rule; return the errors.

    `rows`: check only these query rows (the upstream gradient is zero elsewhere), for sequences
    too long for the reference's N x N matrices. `policy`: the launch policy (its kernels are
    forced to `kernels` and its outputs poisoned). `fast`: the function under test, called as
    `sparse_linear_attention` is.
    """
    dtype = q.dtype
    n = _bhnd(q, layout).shape[2]
    rows_all = torch.arange(n, device=q.device) if rows is None else rows
    bmap = sla_block_map(_bhnd(q, layout), _bhnd(k, layout), config)
    g = torch.Generator(device="cpu").manual_seed(1234)
    do_rows = torch.randn(*_bhnd(q, layout).shape[:2], len(rows_all), q.shape[-1], generator=g)
    do_rows = do_rows.to(q.device)

    def leaves(cast):
        return [x.detach().to(cast(x)).requires_grad_() for x in (q, k, v, w, bias)]

    policy = replace(policy or LaunchPolicy(), kernels=kernels, poison_outputs=True)
    xs = leaves(lambda x: x.dtype)
    with torch.set_grad_enabled(grads):  # (without gradients the op takes its inference path)
        out = fast(*xs, config, layout=layout, policy=policy)
    out_rows = _bhnd(out, layout)[:, :, rows_all]
    results = {"out": out_rows.detach()}
    if grads:
        out_rows.backward(do_rows.to(dtype))
        dq_rows = _bhnd(xs[0].grad, layout)[:, :, rows_all]
        results.update(dq=dq_rows, dk=xs[1].grad, dv=xs[2].grad, dw=xs[3].grad, db=xs[4].grad)

    def reference(cast):
        ys = leaves(cast)
        qb, kb, vb = (_bhnd(y, layout) for y in ys[:3])
        o = sla_reference(qb, kb, vb, ys[3], ys[4], config, bmap=bmap, query_rows=rows)
        res = {"out": o.detach()}
        if grads:
            o.backward(do_rows.to(o.dtype))
            dq_rows = _bhnd(ys[0].grad, layout)[:, :, rows_all]
            res.update(dq=dq_rows, dk=ys[1].grad, dv=ys[2].grad, dw=ys[3].grad, db=ys[4].grad)
        return res

    truth = reference(lambda x: torch.float64)
    # The low-precision run keeps the projection in fp32, as the module does.
    low = reference(lambda x: dtype if x.dim() == 4 else torch.float32)
    errors = {}
    for name in results:
        t = truth[name]
        scale = t.abs().max().item()
        err_fast = (results[name].double() - t).abs().max().item()
        err_low = (low[name].double() - t).abs().max().item()
        errors[name] = (err_fast, err_low)
        bound = FACTOR * err_low + FLOOR[dtype] * max(scale, 1.0)
        assert err_fast <= bound, (
            f"{name}: kernel error {err_fast:.3g} > {FACTOR} x reference error {err_low:.3g} "
            f"+ floor (|truth| {scale:.3g}); {config}, layout={layout}"
        )
    return errors


def critical_lse(q, k, config: SLAConfig, layout="bhnd", dtype=torch.float64):
    """log sum exp(q.k / sqrt(D)) over each query's critical keys, (B, H, N) in float64, with the
    scores computed in `dtype`: SLA's block map of q, k (in their own precision) spread over the
    tokens here, N x N."""
    bmap = sla_block_map(q, k, config, layout=layout)
    q, k = (_bhnd(x, layout).to(dtype) for x in (q, k))
    n = q.shape[2]
    critical = (bmap == 1).repeat_interleave(config.block_q, 2)[:, :, :n]
    critical = critical.repeat_interleave(config.block_k, 3)[..., :n]  # (B, H, N, N)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).double()
    return scores.masked_fill(~critical, float("-inf")).logsumexp(-1)


def check_lse(lse, q, k, config: SLAConfig, layout="bhnd") -> None:
    """Assert the rule (module docstring) for a log-sum-exp over the critical keys (the
    op's `return_lse`): against float64, the error of the scores rounded to q's dtype."""
    truth = critical_lse(q, k, config, layout)
    assert lse.shape == truth.shape, f"lse shape {tuple(lse.shape)}, want {tuple(truth.shape)}"
    err_fast = (lse.double() - truth).abs().max().item()
    err_low = (critical_lse(q, k, config, layout, q.dtype) - truth).abs().max().item()
    bound = FACTOR * err_low + FLOOR[q.dtype] * max(truth.abs().max().item(), 1.0)
    assert err_fast <= bound, (
        f"lse: error {err_fast:.3g} > {FACTOR} x the rounded scores' error {err_low:.3g} + floor; "
        f"{config}, layout={layout}"
    )
