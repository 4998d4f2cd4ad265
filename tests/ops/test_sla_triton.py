"""The Triton SLA kernels (forward and backward) against the reference, on small shapes.

Without CUDA the kernels run through Triton's interpreter (tests/conftest.py), whose bf16
arithmetic is unreliable: bf16 is covered by the GPU grid (test_sla_triton_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from slatte.ops import SLAConfig, sparse_linear_attention
from slatte.ops.sla import LaunchPolicy, op
from slatte.ops.sla.triton import launchers
from slatte.ops.triton_interpreter import triton_interpreting

from .sla_check import check_sla, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = LaunchPolicy(kernels="triton")
REFERENCE = LaunchPolicy(kernels="reference")
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


def opts(**kw):
    base = dict(
        critical=0.25,
        negligible=0.25,
        block_q=32,
        block_k=16,
        feature_map="softmax",
        linear_scope="marginal",
    )
    base.update(kw)
    return SLAConfig(**base)


# Head dims that are no power of two (40: 64-wide feature tiles; 72, the released diffusers
# Latte's: 128-wide) run with the lanes past D masked; fewer lengths, their tiles cost more here.
SIZES = [(n, d) for d in (32, 64) for n in (1, 63, 64, 65, 200)] + [
    (n, d) for d in (40, 72) for n in (1, 65, 200)
]


@pytest.mark.parametrize("n,d", SIZES)
def test_forward_backward_sizes(n, d):
    dtype = torch.float16 if (n + d) % 2 else torch.float32
    check_sla(*make_inputs(1, 2, n, d, dtype, DEVICE, seed=n + d), opts())


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("d", [128, 72])
def test_wide_head_tiles(tma, d):
    """D = 128 with 128-row query blocks takes other tiles (`triton.tiles.tiles`): the forward
    on 128-row tiles with pointer loads, 64-row ones with TMA; the key side's linear share on
    32-row tiles, two per 64-row key block. D = 72 takes the same 128-wide tiles, its lanes past
    72 read as 0 through TMA descriptors (which fill what lies outside the tensor) or through
    masked pointer loads; the forward's linear epilogue skips the last 32-column chunk."""
    check_sla(
        *make_inputs(1, 2, 200, d, torch.float32, DEVICE, seed=3),
        opts(critical=0.25, negligible=0.25, block_q=128, block_k=64),
        policy=LaunchPolicy(tma=tma),
    )


@pytest.mark.skipif(DEVICE == "cuda", reason="fp32 stands in for bf16 only in the interpreter")
@pytest.mark.parametrize(
    "d,block_q,scope",
    [(32, 32, "marginal"), (128, 128, "marginal"), (72, 128, "marginal"), (32, 32, "all")],
)
def test_bf16_pair_path(monkeypatch, exact_products, d, block_q, scope):
    """bf16 inputs take H_i and dH^(j) as (hi, lo) bf16 pairs in the backward
    (`launchers.bf16_pairs`). The interpreter cannot run bf16 products, so fp32 inputs take
    that path here with exact products: the pair's halves (fp32 holding bf16 values) must give
    the fp32 gradients; a lost or misplaced lo half would be off by ~2^-9. Scope "all" splits
    its shared sums into the pair outside the kernels."""
    monkeypatch.setattr(launchers, "bf16_pairs", lambda dtype: True)
    n, block_k = (200, 16) if d == 32 else (130, 64)
    check_sla(
        *make_inputs(1, 2, n, d, torch.float32, DEVICE, seed=4),
        opts(block_q=block_q, block_k=block_k, linear_scope=scope),
    )


@pytest.mark.parametrize("prologue", [True, False])
def test_key_linear_share_in_either_kernel(prologue):
    """The key side's linear share is computed in the dk/dv kernel's prologue or in a kernel of
    its own (the tiles' `key_linear_prologue`): both places give the same gradients, here with
    an fp32 dH (the defaults take the prologue only with the bf16 pair)."""
    check_sla(
        *make_inputs(1, 2, 75, 32, torch.float32, DEVICE, seed=5),
        opts(feature_map="elu"),
        policy=LaunchPolicy(tile_overrides={32: {"key_linear_prologue": prologue}}),
    )


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_key_tiles_by_tma_and_by_pointers(monkeypatch, tma, layout):
    """The forward and dq kernels read key blocks, the block-map GEMM its per-block sums,
    through TMA descriptors where the GPU has the copy engine (and under the interpreter), else
    through pointers (`launchers._use_tma`): both paths, both layouts, ragged last blocks (rows
    past the end must read as zero)."""
    taken = []
    choose = launchers._use_tma

    def spy(policy, *xs):
        taken.append(choose(policy, *xs))
        return taken[-1]

    monkeypatch.setattr(launchers, "_use_tma", spy)
    check_sla(
        *make_inputs(1, 2, 75, 32, torch.float32, DEVICE, seed=5, layout=layout),
        opts(block_q=32, block_k=16),
        layout=layout,
        policy=LaunchPolicy(tma=tma),
    )
    assert taken and all(t == tma for t in taken)


@pytest.mark.parametrize("seed", [1, 2])
def test_one_row_key_block(seed):
    """N = 65 with 64-row blocks: the last key block holds one row, so a query block whose S(i)
    is that block alone has O_l = v of that row, and d phi(q), d phi(k) are differences of two
    nearly equal terms (dO_l H^T vs Delta_l Z, v dH^T vs dZ). Any rounding of H, dH, Delta_l or
    u = phi(q) / den that the two terms do not share shows up there (it failed at 4-12 x the
    reference's error before they were made exact). dv there sums same-signed terms, so a
    truncated (not rounded) fp32 operand of a tf32 product, e.g. W in dO_l = dO W, biases it
    (seed 1 failed on the GPU at 4 x; tests/ops/conftest.py makes the interpreter truncate)."""
    opts_65 = opts(critical=0.05, negligible=0.10, block_q=64, block_k=64, feature_map="relu")
    check_sla(*make_inputs(1, 2, 65, 32, torch.float16, DEVICE, seed=seed), opts_65)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scope", ["marginal", "noncritical", "all"])
def test_linear_scopes(scope, dtype):
    check_sla(*make_inputs(1, 2, 100, 32, dtype, DEVICE, seed=1), opts(linear_scope=scope))


@pytest.mark.parametrize("prologue", [True, False])
@pytest.mark.parametrize(
    "n, d, dtype, layout", [(300, 32, torch.float16, "bnhd"), (777, 40, torch.float32, "bhnd")]
)
def test_all_scope_on_shared_sums(n, d, dtype, layout, prologue):
    """linear_scope "all" sums each head's H, Z (and dH, dZ) once over long row chunks
    (`launchers.shared_sums`): N not a multiple of the chunk (256 rows here) nor of the blocks,
    two batches and heads, both layouts, the key side's share in either kernel."""
    check_sla(
        *make_inputs(2, 2, n, d, dtype, DEVICE, seed=n, layout=layout),
        opts(linear_scope="all", feature_map="elu"),
        layout=layout,
        policy=LaunchPolicy(tile_overrides={d: {"key_linear_prologue": prologue}}),
    )


def test_all_scope_keeps_one_sum_per_head():
    """With scope "all" every query block's H_i, Z_i is the head's sum over all keys: the
    forward keeps one per head (not one per query block) and it is that sum."""
    b, h, n, d = 2, 3, 300, 32
    q, k, v, w, bias = make_inputs(b, h, n, d, torch.float32, DEVICE, seed=8)
    outs = op.sla_fwd(
        q, k, v, w, bias, 1, 1, 32, 16, "softmax", "all", d**-0.5, True, False, "triton",
        TRITON.switches,
    )  # fmt: skip
    hsum, zsum = outs[7], outs[9]
    assert hsum.shape == (b * h, 1, d, d) and zsum.shape == (b * h, 1, d)
    phi = k.double().softmax(-1).flatten(0, 1)  # (B*H, N, D)
    expected_h = phi.transpose(1, 2) @ v.double().flatten(0, 1)
    torch.testing.assert_close(hsum[:, 0].double(), expected_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zsum[:, 0].double(), phi.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feature", ["elu", "relu"])
@pytest.mark.parametrize("d", [32, 40])
def test_feature_maps(feature, d):
    """With D = 40 on 64-wide tiles: elu's phi is 1 on the 24 padding lanes, which must meet
    only zeros (the padding lanes of H, Z, dH, dZ: never stored, loaded as 0). The softmax's
    exclusion of those lanes is checked by the tests above."""
    check_sla(*make_inputs(1, 2, 90, d, torch.float32, DEVICE, seed=2), opts(feature_map=feature))


@pytest.mark.parametrize(
    "block_q,block_k,critical,negligible",
    [
        (64, 64, 0.05, 0.10),  # spec defaults: one critical block, no linear exclusion at N=200
        (128, 64, 0.3, 0.2),  # the official Wan2.1 blocks; tiles smaller than the query block
        (16, 128, 1, 0),  # a count; key blocks wider than a tile
        (32, 16, 0.2, 0.7),  # few marginal blocks
        (32, 16, 1.0, 0.0),  # everything critical: empty linear branch, only the bias
    ],
)
def test_block_shapes_and_fractions(block_q, block_k, critical, negligible):
    check_sla(
        *make_inputs(1, 1, 200, 32, torch.float16, DEVICE, seed=3),
        opts(block_q=block_q, block_k=block_k, critical=critical, negligible=negligible),
    )


def test_bnhd_layout_and_batch():
    check_sla(
        *make_inputs(2, 3, 70, 32, torch.float16, DEVICE, seed=4, layout="bnhd"),
        opts(),
        layout="bnhd",
    )


def test_without_projection_is_sparse_only():
    q, k, v, _, _ = make_inputs(1, 2, 96, 32, torch.float32, DEVICE, seed=5)
    config = SLAConfig(critical=0.25, negligible=0.25, block_q=32, block_k=16)
    out = sparse_linear_attention(q, k, v, config=config, policy=TRITON)
    ref = sparse_linear_attention(q, k, v, config=config, policy=REFERENCE)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_nan_input_gives_nan_output():
    q, k, v, w, b = make_inputs(1, 1, 64, 32, torch.float32, DEVICE, seed=6)
    q[0, 0, 5, 0] = float("nan")
    out = sparse_linear_attention(q, k, v, w, b, SLAConfig(block_q=32, block_k=16), policy=TRITON)
    assert out.isnan().any()


@pytest.mark.parametrize("d", [44, 136])
def test_triton_refuses_what_it_cannot_run(d):
    q = torch.randn(1, 1, 40, d, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match=f"multiples of 8 up to 128, got D={d}"):
        sparse_linear_attention(q, q, q, config=SLAConfig(block_q=16, block_k=16), policy=TRITON)
    q = torch.randn(1, 1, 40, 32, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtypes"):
        sparse_linear_attention(q, q, q, policy=TRITON)


def test_backward_fills_no_gradient_for_saved_outputs():
    """`sla_fwd` returns its saved state (o_s, o_l, the linear sums, ...) as outputs that no
    loss uses; unless the op opts out, autograd fills a zero gradient of each one's size before
    every backward (a pass over their bytes). Only zeros the backward op makes itself may run."""
    q, k, v, w, b = (x.requires_grad_() for x in make_inputs(1, 2, 64, 32, torch.float32, DEVICE))
    out = sparse_linear_attention(q, k, v, w, b, SLAConfig(block_q=16, block_k=16), policy=TRITON)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out.backward(torch.randn_like(out))

    def inside_backward_op(event):
        while event is not None:
            if event.name == "slatte::sla_bwd":
                return True
            event = event.cpu_parent
        return False

    fills = [e for e in prof.events() if e.name == "aten::zeros" and not inside_backward_op(e)]
    assert not fills, f"{len(fills)} zero gradients filled outside the backward op"
    assert q.grad is not None and w.grad is not None


@pytest.mark.parametrize("scope", ["marginal", "all"])
def test_opcheck_and_compile_fullgraph(scope):
    """The fake implementation's shapes match the kernels' (scope "all": one sum per head), with
    the backward's state, the LSE alone (`store_lse`) or neither."""
    q, k, v, w, b = make_inputs(1, 2, 48, 32, torch.float32, DEVICE, seed=7)
    for store_aux, store_lse in ((True, False), (False, True), (False, False)):
        args = (q, k, v, w, b, 1, 1, 16, 16, "softmax", scope, 32**-0.5, store_aux, store_lse,
                "triton", TRITON.switches)  # fmt: skip
        torch.library.opcheck(
            op.sla_fwd._opoverload, args, test_utils=("test_schema", "test_faketensor")
        )

    def f(q, k, v, w, b):
        config = SLAConfig(block_q=16, block_k=16, linear_scope=scope)
        out = sparse_linear_attention(q, k, v, w, b, config, policy=TRITON)
        return out.square().sum()

    leaves = [x.clone().requires_grad_() for x in (q, k, v, w, b)]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves)
    loss.backward()
    eager = [x.clone().requires_grad_() for x in (q, k, v, w, b)]
    f(*eager).backward()
    for a, e in zip(leaves, eager, strict=True):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("d", [32, 40])
def test_forward_mask_gemm_tiles(monkeypatch, tma, d):
    """The inference forward's H_i GEMM takes its tiles from `tiles` (`mask_*`, swept by
    tune_sla.py): tiles taller than the map's query blocks, and column tiles that do not divide
    D x D (D = 40: 1,600 columns in 64-wide tiles), give the reference's output. Training keeps
    the kernel's own tiles for its exact sums (and the backward for its transposed GEMM)."""
    taken = []
    run = launchers.launch

    def spy(kernel, grid, *args, **kw):
        if kernel is launchers.mask_gemm_kernel and kw["COLS"] == d * d and not kw["SPLIT"]:
            taken.append((kw["BLOCK_R"], kw["BLOCK_COLS"], kw["num_warps"]))
        return run(kernel, grid, *args, **kw)

    monkeypatch.setattr(launchers, "launch", spy)
    tile = {"mask_r": 16, "mask_cols": 64, "mask_warps": 2}
    check_sla(
        *make_inputs(1, 2, 200, d, torch.float32, DEVICE, seed=d),
        opts(),
        policy=LaunchPolicy(kernels="triton", tma=tma, tile_overrides={d: tile}),
        grads=False,
    )
    assert taken and set(taken) == {(16, 64, 2)}
    taken.clear()
    check_sla(
        *make_inputs(1, 2, 200, d, torch.float32, DEVICE, seed=d),
        opts(),
        policy=LaunchPolicy(kernels="triton", tma=tma, tile_overrides={d: tile}),
    )
    assert taken and (16, 64, 2) not in taken


@pytest.mark.parametrize("scope", ["marginal", "noncritical"])
def test_forward_mask_gemm_on_cublas(monkeypatch, scope):
    """`mask_cublas`: the forward's H_i as one batched matmul of the 0/1 selection with the
    per-block sums (no `mask_gemm_kernel` launch for them), the reference's output."""
    d = 32
    launched = []
    run = launchers.launch

    def spy(kernel, grid, *args, **kw):
        if kernel is launchers.mask_gemm_kernel:
            launched.append(kw["COLS"])
        return run(kernel, grid, *args, **kw)

    monkeypatch.setattr(launchers, "launch", spy)
    check_sla(
        *make_inputs(2, 2, 200, d, torch.float32, DEVICE, seed=3),
        opts(linear_scope=scope),
        policy=LaunchPolicy(kernels="triton", tile_overrides={d: {"mask_cublas": True}}),
        grads=False,
    )
    assert launched == [d]  # the z sums alone
