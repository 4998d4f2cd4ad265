"""The SLA reference against independent computations of the spec (float64, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from slatte.nn import SparseLinearAttention
from slatte.ops import sla_block_map, sparse_linear_attention
from slatte.ops.sla.block_map import linear_mask
from slatte.ops.sla.config import SLAConfig, block_counts
from slatte.ops.sla.reference import feature_map, linear_branch, sla_reference

F64 = torch.float64


def qkv(b: int, h: int, n: int, d: int, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def dense(q, k, v, mask=None):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def token_mask_by_loops(bmap, n, bq, bk, value):
    b, h = bmap.shape[:2]
    mask = torch.zeros(b, h, n, n, dtype=torch.bool)
    for r in range(n):
        for c in range(n):
            mask[:, :, r, c] = bmap[:, :, r // bq, c // bk] == value
    return mask


@pytest.mark.parametrize("n", [1, 63, 65, 200])
def test_block_map_counts_and_choice(n):
    q, k, _ = qkv(2, 2, n, 32, seed=n)
    bq, bk = 32, 16
    bmap = sla_block_map(q, k, SLAConfig(critical=0.2, negligible=0.3, block_q=bq, block_k=bk))
    nq, nk = math.ceil(n / bq), math.ceil(n / bk)
    assert bmap.shape == (2, 2, nq, nk) and bmap.dtype == torch.int8
    n_crit, n_negl = block_counts(0.2, 0.3, nk)
    assert ((bmap == 1).sum(-1) == n_crit).all()
    assert ((bmap == -1).sum(-1) == n_negl).all()
    # Independent pooled scores: mean over the real rows of each (possibly ragged) block.
    qb = torch.stack([q[:, :, i * bq : (i + 1) * bq].mean(2) for i in range(nq)], 2)
    kb = torch.stack([k[:, :, j * bk : (j + 1) * bk].mean(2) for j in range(nk)], 2)
    probs = torch.softmax(qb @ kb.transpose(-1, -2) / math.sqrt(32), dim=-1)
    crit_min = probs.masked_fill(bmap != 1, float("inf")).amin(-1)
    rest_max = probs.masked_fill(bmap == 1, float("-inf")).amax(-1)
    assert (crit_min >= rest_max).all()
    if n_negl:
        negl_max = probs.masked_fill(bmap != -1, float("-inf")).amax(-1)
        marg_min = probs.masked_fill(bmap != 0, float("inf")).amin(-1)
        assert (negl_max <= marg_min).all()
    assert torch.equal(bmap, sla_block_map(q, k, SLAConfig(0.2, 0.3, block_q=bq, block_k=bk)))


def test_block_counts_rules():
    assert block_counts(0.05, 0.10, 10) == (1, 1)  # at least one critical block
    assert block_counts(0.05, 0.10, 512) == (26, 51)
    assert block_counts(3, 2, 4) == (3, 1)  # counts, capped so that they never overlap
    assert block_counts(100, 0, 4) == (4, 0)
    assert block_counts(1.0, 0.5, 7) == (7, 0)


def test_critical_one_is_dense_attention():
    q, k, v = qkv(1, 2, 130, 32)
    w, b = torch.randn(32, 32, dtype=F64), torch.randn(32, dtype=F64)
    out = sparse_linear_attention(q, k, v, w, b, SLAConfig(critical=1.0, negligible=0.0))
    # With every block critical the linear branch is empty: O_l = 0, so only the bias remains.
    torch.testing.assert_close(out, dense(q, k, v) + b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,bq,bk", [(200, 64, 64), (65, 16, 32), (1, 64, 64)])
def test_zero_projection_is_masked_dense(n, bq, bk):
    q, k, v = qkv(2, 2, n, 32, seed=1)
    config = SLAConfig(critical=0.3, negligible=0.2, block_q=bq, block_k=bk)
    bmap = sla_block_map(q, k, config)
    expect = dense(q, k, v, token_mask_by_loops(bmap, n, bq, bk, 1))
    zero_w, zero_b = torch.zeros(32, 32, dtype=F64), torch.zeros(32, dtype=F64)
    for w, b in ((None, None), (zero_w, zero_b)):
        out = sparse_linear_attention(q, k, v, w, b, config)
        torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scope", ["marginal", "noncritical", "all"])
@pytest.mark.parametrize("feature", ["softmax", "elu", "relu"])
def test_linear_branch_is_block_formula(scope, feature):
    n, d, bq, bk = 150, 16, 32, 16
    q, k, v = qkv(1, 2, n, d, seed=2)
    bmap = sla_block_map(q, k, SLAConfig(critical=0.2, negligible=0.3, block_q=bq, block_k=bk))
    config = SLAConfig(0.2, 0.3, bq, bk, feature_map=feature, linear_scope=scope)
    eye = torch.eye(d, dtype=F64)
    o_l = sla_reference(q, k, v, eye, None, config) - sla_reference(q, k, v, None, None, config)
    # Spec formula: H_i = sum_{j in S(i)} phi(K_j)^T V_j, Z_i = sum phi(K_j), per block.
    fq, fk = feature_map(q, feature), feature_map(k, feature)
    nk = math.ceil(n / bk)
    h = torch.stack([fk[:, :, j * bk : (j + 1) * bk].transpose(-1, -2) @ v[:, :, j * bk : (j + 1) * bk] for j in range(nk)], 2)  # fmt: skip
    z = torch.stack([fk[:, :, j * bk : (j + 1) * bk].sum(2) for j in range(nk)], 2)
    allowed = {"marginal": (0,), "noncritical": (0, -1), "all": (0, -1, 1)}[scope]
    expect = torch.zeros_like(q)
    for i in range(math.ceil(n / bq)):
        sel = torch.zeros_like(bmap[:, :, i], dtype=F64)
        for value in allowed:
            sel += (bmap[:, :, i] == value).to(F64)
        hi = torch.einsum("bhj,bhjde->bhde", sel, h)
        zi = torch.einsum("bhj,bhjd->bhd", sel, z)
        rows = slice(i * bq, (i + 1) * bq)
        num = fq[:, :, rows] @ hi
        den = (fq[:, :, rows] * zi[:, :, None]).sum(-1, keepdim=True) + 1e-5
        expect[:, :, rows] = num / den
    torch.testing.assert_close(o_l, expect, rtol=1e-9, atol=1e-9)


def test_negligible_blocks_change_nothing():
    # One query block: the negligible key blocks are the same for every query row.
    n, d = 128, 16
    q, k, v = qkv(1, 1, n, d, seed=3)
    w, b = torch.randn(d, d, dtype=F64), torch.randn(d, dtype=F64)
    kwargs = dict(critical=0.25, negligible=0.25, block_q=128, block_k=16)
    bmap = sla_block_map(q, k, SLAConfig(**kwargs))
    rows = token_mask_by_loops(bmap, n, 128, 16, -1)[0, 0, 0]
    v2 = v.clone()
    v2[:, :, rows] += 100.0  # v does not enter the block map
    for scope, same in (("marginal", True), ("noncritical", False)):
        config = SLAConfig(linear_scope=scope, **kwargs)
        o1 = sparse_linear_attention(q, k, v, w, b, config)
        o2 = sparse_linear_attention(q, k, v2, w, b, config)
        assert torch.allclose(o1, o2, rtol=1e-10, atol=1e-10) == same


def test_bnhd_layout_matches_bhnd():
    q, k, v = qkv(2, 3, 70, 16, seed=4)
    w, b = torch.randn(16, 16, dtype=F64), torch.randn(16, dtype=F64)
    config = SLAConfig(block_q=32, block_k=16)
    out = sparse_linear_attention(q, k, v, w, b, config)
    t = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    out2 = sparse_linear_attention(*t, w, b, config, layout="bnhd")
    torch.testing.assert_close(out2, out.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_returns_caller_dtype_and_gradients_flow():
    q, k, v = (x.float().requires_grad_() for x in qkv(1, 2, 40, 16, seed=5))
    module = SparseLinearAttention(16, SLAConfig(block_q=16, block_k=16, critical=0.5))
    out = module(q, k, v)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    for x in (q, k, v, module.proj_l.weight, module.proj_l.bias):
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_module_zero_init_and_official_state_dict():
    q, k, v = qkv(1, 2, 96, 32, seed=6, dtype=torch.float32)
    module = SparseLinearAttention(32, SLAConfig(block_q=32, block_k=32, critical=0.3))
    sparse_only = sparse_linear_attention(q, k, v, None, None, module.config)
    torch.testing.assert_close(module(q, k, v), sparse_only)
    official = {"blocks.0.attn.proj_l.weight": torch.randn(32, 32).bfloat16(), "blocks.0.attn.proj_l.bias": torch.randn(32)}  # fmt: skip
    module.load_official_state_dict(official, prefix="blocks.0.attn.")
    assert module.proj_l.weight.dtype == torch.float32
    assert torch.equal(module.proj_l.weight, official["blocks.0.attn.proj_l.weight"].float())
    assert not torch.allclose(module(q, k, v), sparse_only)
    with pytest.raises(ValueError, match="proj_l.weight"):
        module.load_official_state_dict({}, prefix="x.")
    with pytest.raises(ValueError, match="shape"):
        module.load_official_state_dict({"proj_l.weight": torch.zeros(8, 8), "proj_l.bias": torch.zeros(8)})  # fmt: skip


def test_identity_projection_adds_the_linear_branch_as_it_is_and_is_not_trained():
    q, k, v = qkv(1, 2, 96, 32, seed=7, dtype=torch.float32)
    opts = dict(block_q=32, block_k=32, critical=0.3, negligible=0.2)
    identity = SparseLinearAttention(32, SLAConfig(projection="identity", **opts))
    learned = SparseLinearAttention(32, SLAConfig(**opts))  # zero projection: sparse only
    bmap = sla_block_map(q, k, SLAConfig(**opts))
    mask = linear_mask(bmap, "marginal")
    tokens = mask.repeat_interleave(32, dim=-2).repeat_interleave(32, dim=-1)
    linear = linear_branch(q, k, v, tokens, "softmax")  # the spec's O_l, independently
    torch.testing.assert_close(identity(q, k, v) - learned(q, k, v), linear, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in identity.parameters())
    with pytest.raises(ValueError, match="projection is fixed"):
        identity.load_official_state_dict({})
    with pytest.raises(ValueError, match="projection must be one of"):
        SLAConfig(projection="none")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(k=torch.randn(1, 2, 50, 16)), "cross-attention"),
        (dict(k=torch.randn(1, 3, 40, 16)), "same"),
        (dict(v=torch.randn(1, 2, 40, 8)), "v must"),
        (dict(layout="nhd"), "layout"),
        (dict(config=dict(critical=0.1)), "config must be an SLAConfig"),
        (dict(policy="reference"), "policy must be a LaunchPolicy"),
        (dict(proj_weight=torch.zeros(8, 8)), "proj_weight"),
        (dict(q=torch.randn(2, 40, 16)), "4-D"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    # (bad SLA options are refused by SLAConfig itself: tests/ops/test_sla_config.py)
    args = dict(
        q=torch.randn(1, 2, 40, 16), k=torch.randn(1, 2, 40, 16), v=torch.randn(1, 2, 40, 16)
    )
    args.update(change)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=match):
        sparse_linear_attention(q, k, v, **args)


def test_nan_input_gives_nan_output():
    q, k, v = qkv(1, 1, 64, 16, seed=7)
    q[0, 0, 3, 2] = float("nan")
    config = SLAConfig(block_q=16, block_k=16)
    out = sparse_linear_attention(q, k, v, torch.eye(16, dtype=F64), None, config)
    assert out.isnan().any()
