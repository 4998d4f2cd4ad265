"""The block map's classification kernel against the torch sort it replaces, and `mean_pool`'s
ragged last block against a direct per-block mean.

Without CUDA the kernel runs through Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from slatte.ops import sla_block_map
from slatte.ops.sla.block_map import block_map, block_scores, classify, mean_pool
from slatte.ops.sla.config import SLAConfig, block_counts
from slatte.ops.sla.triton import block_map_launchers
from slatte.ops.triton_interpreter import triton_interpreting

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)",
)


def make_scores(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        s = torch.randn(shape, generator=g)
    elif kind == "ties":  # a few distinct values, negative ones too
        s = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "equal":  # one value per row, +0.0 and -0.0 mixed (equal for the sort)
        s = torch.zeros(shape)
        s[..., ::3] = -0.0
    elif kind == "inf":  # -inf for blocks whose softmax underflows, +inf and ties at the top
        s = torch.randn(shape, generator=g)
        s[..., ::3] = float("-inf")
        s[..., 1::7] = float("inf")
    else:
        raise ValueError(kind)
    return s.to(DEVICE)


def assert_same(scores: torch.Tensor, critical: float | int, negligible: float | int) -> None:
    want_map, want_lut = classify(scores, critical, negligible, use_kernel=False)
    # The kernel itself, not `classify`'s dispatch: a dispatch that fell back to the sort would
    # make this comparison pass without running the kernel (test_classify_dispatches_...).
    n_crit, n_negl = block_counts(critical, negligible, scores.shape[-1])
    got_map, got_lut = block_map_launchers.classify_blocks(scores, n_crit, n_negl)
    assert got_map.dtype == torch.int8 and got_lut.dtype == torch.int32
    assert torch.equal(got_map, want_map), (critical, negligible)
    assert torch.equal(got_lut, want_lut), (critical, negligible)


@needs_kernel
@pytest.mark.parametrize("nk", [1, 2, 5, 63, 64, 65, 200])
@pytest.mark.parametrize("kind", ["random", "ties", "equal", "inf"])
def test_kernel_equals_sort(nk, kind):
    scores = make_scores((2, 3, 4, nk), kind, seed=nk)
    # n_negl 0 and > 0; everything critical; n_crit = Nk - n_negl (no marginal block).
    for critical, negligible in [(0.05, 0.10), (0.3, 0), (1.0, 0.0), (0.5, 0.5), (1, nk - 1)]:
        assert_same(scores, critical, negligible)
    n_crit, n_negl = block_counts(0.4, 0.6, nk)
    assert_same(scores, n_crit, nk - n_crit)


@needs_kernel
@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, 7),  # one row
        (3, 2, 5, 33),  # rows of several heads and batches
        (1, 2, 3, 4096),  # the widest row the kernel takes; rows split over programs
        (2, 1, 2, 1000),
    ],
)
def test_kernel_shapes(shape):
    assert_same(make_scores(shape, "ties", seed=1), 0.2, 0.3)
    assert_same(make_scores(shape, "random", seed=2), 0.05, 0.10)


@needs_kernel
def test_tie_order_by_hand():
    """Ties at the critical threshold go to the lower indices, at the negligible one to the
    higher indices (a stable descending sort), and the LUT is ascending."""
    scores = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]], device=DEVICE)
    bmap, lut = classify(scores, 3, 3, use_kernel=True)
    assert bmap.tolist() == [[0, 1, 1, -1, 1, -1, -1, 0]]
    assert lut.tolist() == [[1, 2, 4]]


@needs_kernel
def test_non_contiguous_scores():
    scores = make_scores((2, 40, 3, 6), "random", seed=3).permute(0, 2, 3, 1)  # (2, 3, 6, 40)
    assert_same(scores, 0.25, 0.25)


@needs_kernel
def test_nan_scores_keep_counts():
    """NaN scores may give any map, but a well-formed one: the counts hold and the LUT lists
    exactly the critical columns, so nothing is written out of bounds or left unwritten."""
    scores = make_scores((2, 1, 3, 50), "random", seed=4)
    scores[0, 0, 0, ::4] = float("nan")
    scores[1, 0, 2] = float("nan")
    n_crit, n_negl = block_counts(0.2, 0.3, 50)
    bmap, lut = classify(scores, n_crit, n_negl, use_kernel=True)
    assert ((bmap == 1).sum(-1) == n_crit).all() and ((bmap == -1).sum(-1) == n_negl).all()
    assert ((bmap == 0) | (bmap == 1) | (bmap == -1)).all()
    from_map = torch.stack([row.nonzero().flatten() for row in (bmap == 1).flatten(0, 2)])
    assert torch.equal(lut.flatten(0, 2).long(), from_map)


@needs_kernel
def test_public_map_on_device_equals_sort():
    """`sla_block_map` (the map tests/ops/sla_check.py gives the reference) picks what the sort
    picks, on whichever path this device takes."""
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, 2, 200, 32, generator=g).to(DEVICE) for _ in range(2))
    want = classify(block_scores(q, k, 32, 16), 0.2, 0.3, use_kernel=False)[0]
    assert torch.equal(
        sla_block_map(q, k, SLAConfig(critical=0.2, negligible=0.3, block_q=32, block_k=16)), want
    )


@needs_kernel
def test_classify_dispatches_to_the_kernel(monkeypatch):
    """use_kernel=True runs the kernel (fp32 rows up to MAX_BLOCK); other dtypes take the sort."""
    launched = []
    kernel = block_map_launchers.classify_blocks

    def spy(*args):
        launched.append(args[0].dtype)
        return kernel(*args)

    monkeypatch.setattr(block_map_launchers, "classify_blocks", spy)
    scores = make_scores((1, 1, 2, 9), "random", seed=7)
    classify(scores, 0.3, 0.2, use_kernel=True)
    classify(scores.double(), 0.3, 0.2, use_kernel=True)
    assert launched == [torch.float32]


def test_kernel_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensor or TRITON_INTERPRET=1"):
        classify(torch.zeros(1, 4), 1, 1, use_kernel=True)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_mean_pool_ragged(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, 3, n, 8, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for block in (16, 64):
        want = torch.stack(
            [x[:, :, i : i + block].double().mean(2) for i in range(0, n, block)], dim=2
        )
        got = mean_pool(x, block)
        assert got.dtype == acc and got.shape == want.shape
        tol = 1e-12 if acc == torch.float64 else 1e-6
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_block_map_compiles_fullgraph():
    """Dynamo takes the map in one graph (mean_pool's out= buffers must be contiguous slices),
    with inputs that require grad (the map passes none), and gives the eager map."""
    g = torch.Generator().manual_seed(6)
    q, k = (torch.randn(2, 2, 100, 16, generator=g, requires_grad=True) for _ in range(2))
    config = SLAConfig(critical=0.2, negligible=0.2, block_q=32, block_k=16)
    compiled = torch.compile(
        lambda q, k: block_map(q, k, config), fullgraph=True, backend="aot_eager"
    )
    assert torch.equal(compiled(q, k), block_map(q, k, config))
