"""diffusers' context parallelism on an SLA-enabled tiny Wan, on 2 gloo processes, equals one
process: the SLA processor runs sharded (ring or Ulysses) instead of attending to its chunk only.

diffusers 0.42's `enable_parallelism` picks the device as `rank % torch.accelerator.device_count()`,
which divides by zero on a host without an accelerator; `_enable_context_parallel` takes its
steps for context parallelism (the same diffusers calls, with the CPU as device) so that the
processors and hooks are those `enable_parallelism` installs on a GPU host.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_testing import init_gloo, spawn

from integrations.diffusers_testing import model_inputs, tiny_wan
from slatte.integrations.diffusers_sla import disable_sla, enable_sla

pytestmark = pytest.mark.slow  # two processes importing diffusers: ~40 s on 2 cores

WORLD = 2
# ContextParallelConfig options. The tiny Wan of the diffusers tests sees 3 frames of 4x4
# patches: 48 tokens, 24 per process, so the second block of 16 straddles the two.
# (`ring_anything`'s ragged chunks are not covered: diffusers gathers them with an all_gather
# that gloo refuses for unequal sizes.)
CASES = {"ring": {"ring_degree": WORLD}, "ulysses": {"ulysses_degree": WORLD}}


def _sla_wan() -> tuple[torch.nn.Module, dict]:
    model = tiny_wan()
    enable_sla(model, critical=1, negligible=1, block_q=16, block_k=16, backend="sla_reference")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a nonzero projection, so that the linear branch counts
        for name, param in model.named_parameters():
            if "proj_l" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return model, model_inputs("wan", batch=1)


def _enable_context_parallel(model: torch.nn.Module, options: dict, rank: int) -> None:
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    cp = ContextParallelConfig(**options)
    config = ParallelConfig(context_parallel_config=cp)
    mesh = init_device_mesh("cpu", cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config.setup(rank, WORLD, torch.device("cpu"), mesh=mesh)
    model._parallel_config = config
    for module in model.modules():
        if hasattr(getattr(module, "processor", None), "_parallel_config"):
            module.processor._parallel_config = config
    apply_context_parallel(model, cp, model._cp_plan)


def _attn1_processors(model: torch.nn.Module) -> list:
    return [block.attn1.processor for block in model.blocks]


def _worker(rank: int, world: int, out_path: str) -> None:
    init_gloo()
    results: dict[str, object] = {}
    for name, options in CASES.items():
        model, inputs = _sla_wan()
        with torch.no_grad():
            expected = model(**inputs, return_dict=False)[0]
        _enable_context_parallel(model, options, rank)
        with torch.no_grad():
            got = model(**inputs, return_dict=False)[0]  # the hooks take tuples
        results[name] = float((got - expected).abs().max())
        results[f"{name}/scale"] = float(expected.abs().max())
    # SLA enabled after context parallelism keeps its config; disable_sla hands the config that
    # reached the SLA processors back to the ones it restores.
    model, _ = _sla_wan()
    disable_sla(model)
    _enable_context_parallel(model, {"ring_degree": WORLD}, rank)
    enable_sla(model, critical=1, negligible=1, block_q=16, block_k=16, backend="sla_reference")
    results["kept"] = [
        p._parallel_config is model._parallel_config for p in _attn1_processors(model)
    ]
    model, _ = _sla_wan()
    _enable_context_parallel(model, {"ring_degree": WORLD}, rank)
    disable_sla(model)
    results["restored"] = [
        p._parallel_config is model._parallel_config for p in _attn1_processors(model)
    ]
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cp") / "results")
    spawn(_worker, WORLD, path)
    return [torch.load(f"{path}.{rank}") for rank in range(WORLD)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_context_parallel_sla_wan_matches_one_process(results, name):
    for rank_results in results:
        assert rank_results[name] < 1e-5 * max(1.0, rank_results[f"{name}/scale"]), rank_results


def test_context_parallel_config_survives_enabling_and_disabling_sla(results):
    for rank_results in results:
        assert rank_results["kept"] == [True, True]
        assert rank_results["restored"] == [True, True]
