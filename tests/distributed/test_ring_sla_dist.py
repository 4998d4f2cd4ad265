"""Ring and hybrid (Ulysses x ring) SLA on gloo processes equal single-process SLA.

One spawn per world size computes every comparison; each test asserts one of them. The
sequences are ragged: N is not a multiple of world size x block, so blocks straddle processes.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_testing import init_gloo, spawn

from slatte.ops import sparse_linear_attention
from slatte.ops.sla import sla_block_map
from slatte.ops.sla.config import SLAConfig
from slatte.parallel import (
    hybrid_attention,
    hybrid_groups,
    hybrid_sla,
    ring_attention,
    ring_block_map,
    ring_sla,
)

# (name, N, config, max_scores): 16-row blocks, so N = 200 / 203 puts block boundaries inside
# the chunks; a small max_scores computes the query rows in tiles (14 rows at a time here).
TILED = 3000
SLA_CASES = [
    ("marginal", 200, SLAConfig(critical=0.25, negligible=0.25, block_q=16, block_k=16), None),
    (
        "all_elu_uneven_tiled",
        203,
        SLAConfig(
            critical=3, negligible=2, block_q=32, block_k=16, feature_map="elu", linear_scope="all"
        ),
        TILED,
    ),  # fmt: skip
    ("no_projection", 200, SLAConfig(critical=0.25, negligible=0.1, block_q=16, block_k=32), None),
]
H, D = 2, 16


def _inputs(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    q, k, v, weight = (torch.randn(1, H, n, D, generator=gen, dtype=torch.float64) for _ in "qkvw")
    proj_w = 0.3 * torch.randn(D, D, generator=gen, dtype=torch.float64)
    proj_b = 0.1 * torch.randn(D, generator=gen, dtype=torch.float64)
    return [q, k, v, weight, proj_w, proj_b]


def _compare(attend_full, attend_local, n: int, chunks: int, chunk: int, proj: bool):
    """Errors of the local chunk's output and of every gradient (the projection's summed over
    the processes) against one process."""
    q, k, v, weight, proj_w, proj_b = _inputs(n)
    params = [p.clone().requires_grad_() for p in (proj_w, proj_b)] if proj else [None, None]
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    out_full = attend_full(*full, *params)
    (out_full * weight).sum().backward()
    full_grads = [t.grad for t in (*full, *params) if t is not None]

    def split(t):
        return t.tensor_split(chunks, dim=2)[chunk]

    local_params = [p.clone().detach().requires_grad_() for p in params if p is not None]
    local = [split(t).clone().requires_grad_() for t in (q, k, v)]
    out_local = attend_local(*local, *(local_params or [None, None]))
    (out_local * split(weight)).sum().backward()
    for p in local_params:
        dist.all_reduce(p.grad)  # each process's share of the projection's gradient
    errs = {"out": float((out_local - split(out_full)).detach().abs().max())}
    grads = [t.grad for t in local] + [p.grad for p in local_params]
    names = ["q", "k", "v", "proj_w", "proj_b"]
    wanted = [split(g) for g in full_grads[:3]] + full_grads[3:]
    for name, got, want in zip(names, grads, wanted, strict=False):
        errs[f"grad_{name}"] = float((got - want).abs().max())
    return errs


def _sla_full(config):
    def attend(q, k, v, w, b):
        return sparse_linear_attention(q, k, v, w, b, config)

    return attend


def _ring_worker(rank: int, world: int, out_path: str) -> None:
    init_gloo()
    group = dist.group.WORLD
    results: dict[str, object] = {}
    for name, n, config, max_scores in SLA_CASES:
        proj = name != "no_projection"
        tiles = {} if max_scores is None else {"max_scores": max_scores}

        def local(q, k, v, w, b, config=config, tiles=tiles):
            return ring_sla(q, k, v, w, b, config, group, **tiles)

        results[f"sla/{name}"] = _compare(_sla_full(config), local, n, world, rank, proj)
        q, k = (t.tensor_split(world, dim=2)[rank] for t in _inputs(n)[:2])
        full_map = sla_block_map(*_inputs(n)[:2], config)
        results[f"map/{name}"] = bool(torch.equal(ring_block_map(q, k, config, group), full_map))
    results["dense"] = _compare(
        lambda q, k, v, w, b: F.scaled_dot_product_attention(q, k, v),
        lambda q, k, v, w, b: ring_attention(q, k, v, group, max_scores=TILED),
        203,
        world,
        rank,
        proj=False,
    )
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


def _hybrid_worker(rank: int, world: int, out_path: str) -> None:
    init_gloo()
    ring_group, ulysses_group = hybrid_groups(2)
    _, n, config, _ = SLA_CASES[0]
    results: dict[str, object] = {}

    def local(q, k, v, w, b):
        return hybrid_sla(q, k, v, w, b, config, ring_group, ulysses_group)

    results["sla"] = _compare(_sla_full(config), local, n, world, rank, proj=True)
    results["dense"] = _compare(
        lambda q, k, v, w, b: F.scaled_dot_product_attention(q, k, v),
        lambda q, k, v, w, b: hybrid_attention(q, k, v, ring_group, ulysses_group),
        n,
        world,
        rank,
        proj=False,
    )
    uneven = torch.zeros(1, H, 10 + rank, D)  # Ulysses groups need chunks of one length
    try:
        hybrid_sla(uneven, uneven, uneven, None, None, config, ring_group, ulysses_group)
        results["uneven_error"] = ""
    except ValueError as err:
        results["uneven_error"] = str(err)
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


def _run(worker, world, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ring") / "results")
    spawn(worker, world, path)
    return [torch.load(f"{path}.{rank}") for rank in range(world)]


@pytest.fixture(scope="module")
def ring_results(tmp_path_factory):
    return _run(_ring_worker, 2, tmp_path_factory)


@pytest.fixture(scope="module")
def hybrid_results(tmp_path_factory):
    return _run(_hybrid_worker, 4, tmp_path_factory)


@pytest.mark.parametrize("case", [c[0] for c in SLA_CASES])
def test_ring_sla_matches_one_process(ring_results, case):
    """Forward and the gradients of q, k, v and the projection, on ragged chunks."""
    for rank_results in ring_results:
        errs = rank_results[f"sla/{case}"]
        assert len(errs) == (6 if case != "no_projection" else 4)
        assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("case", [c[0] for c in SLA_CASES])
def test_ring_block_map_is_the_one_process_map(ring_results, case):
    assert all(rank_results[f"map/{case}"] for rank_results in ring_results)


def test_ring_dense_attention_matches_one_process(ring_results):
    for rank_results in ring_results:
        assert max(rank_results["dense"].values()) < 1e-10, rank_results["dense"]


@pytest.mark.slow
def test_hybrid_sla_and_dense_match_one_process(hybrid_results):
    """Ring of 2 x Ulysses of 2 on 4 processes."""
    for rank_results in hybrid_results:
        assert max(rank_results["sla"].values()) < 1e-10, rank_results["sla"]
        assert max(rank_results["dense"].values()) < 1e-10, rank_results["dense"]
        assert "one length" in rank_results["uneven_error"]


def test_hybrid_groups_rejects_a_bad_ring_degree():
    with pytest.raises(ValueError, match="ring_degree must be an int"):
        hybrid_groups(0)
