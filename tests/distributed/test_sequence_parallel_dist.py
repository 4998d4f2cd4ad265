"""Ulysses sequence parallelism on 2 gloo processes equals single-process attention and models.

One spawn computes every comparison (spawning costs seconds); each test asserts one of them.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_testing import init_gloo, spawn

from slatte.models import VideoDiT, model_config
from slatte.ops import sparse_linear_attention
from slatte.ops.attention import attention
from slatte.ops.sequence_parallel import check_heads, ulysses_attention
from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.config import SLAConfig
from slatte.parallel import sequence_shard

WORLD = 2
SLA = SLAConfig(critical=0.25, negligible=0.25, block_q=16, block_k=16)
BACKENDS = ("sdpa", "sla_reference")
MODELS = [(pattern, backend) for pattern in ("alternating", "full") for backend in BACKENDS]
# Batch 1 takes the copy-free path (the head-sharded q, k, v are strided views of the received
# buffer); "sla_triton" runs the Triton SLA kernels (the interpreter on a CPU), which read those
# views through their strides.
ATTENTION_CASES = [(b, backend) for b in (1, 2) for backend in (*BACKENDS, "sla_triton")]


def _errors(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _attention_case(rank: int, b: int, backend: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    h, n, d = 4, 128, 16
    q, k, v, weight = (torch.randn(b, h, n, d, generator=gen) for _ in range(4))
    proj = 0.3 * torch.randn(d, d, generator=gen)

    def attend(q_, k_, v_):
        if backend == "sla_triton":
            policy = LaunchPolicy(kernels="triton")
            return sparse_linear_attention(q_, k_, v_, proj, config=SLA, policy=policy)
        return attention(q_, k_, v_, backend=backend, sla=SLA, proj_weight=proj)

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    out_full = attend(*full)
    (out_full * weight).sum().backward()

    local = [t.chunk(WORLD, dim=2)[rank].clone().requires_grad_() for t in (q, k, v)]
    out_local = ulysses_attention(*local, attend, dist.group.WORLD)
    (out_local * weight.chunk(WORLD, dim=2)[rank]).sum().backward()

    errs = {"out": _errors(out_local, out_full.chunk(WORLD, dim=2)[rank])}
    for name, a, f in zip("qkv", local, full, strict=True):
        errs[f"grad_{name}"] = _errors(a.grad, f.grad.chunk(WORLD, dim=2)[rank])
    return errs


def _random_model(pattern: str, backend: str) -> VideoDiT:
    torch.manual_seed(0)
    model = VideoDiT(
        model_config(
            "Latte-T/2",
            input_size=8,
            num_frames=4,
            block_pattern=pattern,
            attention_backend=backend,
            sla=SLAConfig(critical=0.5, negligible=0.0, block_q=16, block_k=16),
        )
    )
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # fill the zero-initialised layers too, so every path matters
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    return model.eval()  # no label dropout: every call sees the same labels


def _model_case(rank: int, pattern: str, backend: str) -> dict[str, float]:
    model = _random_model(pattern, backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 1, 8, 8, generator=gen)
    t = torch.tensor([10, 500])
    y = torch.tensor([1, 3])
    weight = torch.randn(2, 4, 2, 8, 8, generator=gen)  # learn_sigma: 2 output channels

    out_full = model(x, t, y)
    (out_full * weight).sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    group = dist.group.WORLD
    with torch.no_grad(), model.sequence_parallel(sequence_shard(group)):  # sampling: whole video
        out_sampling = model(x, t, y)
    shard = sequence_shard(group, full_sequence=False)
    with model.sequence_parallel(shard):  # training: own frames
        out_local = model(shard.split_frames(x), t, y)
        (out_local * shard.split_frames(weight)).sum().backward()
    grad_err = 0.0
    for name, param in model.named_parameters():
        dist.all_reduce(param.grad)  # the sum of the frame shares is the whole gradient
        scale = float(full_grads[name].abs().max()) + 1e-6  # gradients reach the hundreds
        grad_err = max(grad_err, _errors(param.grad, full_grads[name]) / scale)
    return {
        "sampling": _errors(out_sampling, out_full),
        "training": _errors(out_local, out_full.chunk(WORLD, dim=1)[rank]),
        "grad_relative": grad_err,
    }


def _shard_is_the_models_own() -> dict[str, object]:
    """Inside one model's sequence-parallel block another model still runs on whole videos,
    and the block leaves no shard behind."""
    model, other = _random_model("full", "sdpa"), _random_model("full", "sdpa")
    x, t = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([9])
    with torch.no_grad():
        alone = other(x, t)
        with model.sequence_parallel(sequence_shard(dist.group.WORLD, full_sequence=False)):
            sharded = model(x[:, :2], t)
            inside = other(x, t)
    return {
        "sharded_frames": sharded.shape[1],
        "other_error": _errors(inside, alone),
        "left_behind": model.sequence,
    }


def _worker(rank: int, world: int, out_path: str) -> None:
    init_gloo()
    results: dict[str, object] = {}
    for b, backend in ATTENTION_CASES:
        results[f"attention/{backend}/b{b}"] = _attention_case(rank, b, backend)
    for pattern, backend in MODELS:
        results[f"model/{pattern}/{backend}"] = _model_case(rank, pattern, backend)
    results["per_model"] = _shard_is_the_models_own()
    q = torch.randn(1, 3, 8, 4)  # 3 heads cannot be split over 2 processes
    try:
        ulysses_attention(q, q, q, lambda *a: attention(*a), dist.group.WORLD)
        results["odd_heads_error"] = ""
    except ValueError as err:
        results["odd_heads_error"] = str(err)
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sp") / "results")
    spawn(_worker, WORLD, path)
    return [torch.load(f"{path}.{rank}") for rank in range(WORLD)]


@pytest.mark.parametrize(("batch", "backend"), ATTENTION_CASES)
def test_ulysses_attention_matches_one_process(results, batch, backend):
    for rank_results in results:
        errs = rank_results[f"attention/{backend}/b{batch}"]
        assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize(("pattern", "backend"), MODELS)
def test_sequence_parallel_model_matches_one_process(results, pattern, backend):
    """Sampling (whole video), training (own frames) and the summed gradients all match."""
    for rank_results in results:
        errs = rank_results[f"model/{pattern}/{backend}"]
        assert max(errs.values()) < 1e-4, errs


def test_the_shard_is_given_to_one_model(results):
    for rank_results in results:
        per_model = rank_results["per_model"]
        assert per_model["sharded_frames"] == 2  # this process's frames in and out
        assert per_model["other_error"] == 0.0 and per_model["left_behind"] is None


def test_heads_not_divisible_is_a_clear_error(results):
    assert "divisible by 2" in results[0]["odd_heads_error"]
    with pytest.raises(ValueError, match="got 6 heads"):
        check_heads(6, 4)
    check_heads(8, 4)
