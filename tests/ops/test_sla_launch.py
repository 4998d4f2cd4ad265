"""Kernel launches on GPUs with less shared memory than the configs were chosen for: fewer
pipeline stages until the kernel fits, remembered; a clear error when nothing fits."""

from __future__ import annotations

import pytest
import torch
from triton.runtime.errors import OutOfResources

from slatte.ops.sla import LaunchPolicy
from slatte.ops.sla.triton import launch as launch_module
from slatte.ops.sla.triton import launchers

from .sla_check import check_sla, make_inputs
from .test_sla_triton import DEVICE, opts, pytestmark  # noqa: F401  (same skip rule)


class SmallSharedMemory:
    """Stands in for a Triton kernel on a GPU where only `fits` stages fit; records the stages
    of every launch attempt and runs `inner` (if any) when the launch fits."""

    def __init__(self, fits: int, inner=None, name: str = "small_smem_kernel"):
        self.fits, self.inner, self.__name__ = fits, inner, name
        self.attempts: list[int] = []

    def __getitem__(self, grid):
        def run(*args, num_stages, **options):
            self.attempts.append(num_stages)
            if num_stages > self.fits:
                raise OutOfResources(65536 * num_stages, 65536 * self.fits, "shared memory")
            return self.inner[grid](*args, num_stages=num_stages, **options) if self.inner else 7

        return run


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(launch_module, "_STAGES_THAT_FIT", {})


def test_fewer_stages_until_it_fits_then_remembered():
    kernel = SmallSharedMemory(fits=2)
    x = torch.zeros(1)
    assert launch_module.launch(kernel, (1,), x, num_stages=4, BLOCK=64) == 7
    assert kernel.attempts == [4, 3, 2]
    assert launch_module.launch(kernel, (1,), x, num_stages=4, BLOCK=64) == 7
    assert kernel.attempts == [4, 3, 2, 2]  # the second call starts at the depth that fitted
    launch_module.launch(kernel, (1,), x, num_stages=4, BLOCK=128)  # another config: searched anew
    assert kernel.attempts[-3:] == [4, 3, 2]


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match="small_smem_kernel does not fit this GPU"):
        launch_module.launch(SmallSharedMemory(fits=0), (1,), torch.zeros(1), num_stages=3)


def test_sla_backward_runs_with_fewer_stages(monkeypatch):
    """The real dq kernel behind a device that fits one stage: same results as the reference."""
    small = SmallSharedMemory(fits=1, inner=launchers.sla_bwd_dq_kernel, name="dq_one_stage")
    monkeypatch.setattr(launchers, "sla_bwd_dq_kernel", small)
    policy = LaunchPolicy(tile_overrides={32: {"dq_stages": 3}})
    check_sla(*make_inputs(1, 2, 70, 32, torch.float32, DEVICE, seed=4), opts(), policy=policy)
    assert small.attempts[:3] == [3, 2, 1] and set(small.attempts[3:]) <= {1}
