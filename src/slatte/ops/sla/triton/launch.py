"""Kernel launches that fit the GPU they run on.

The SLA kernels' tiles and pipeline depths were chosen on an H100 (227 KB of shared memory per
block). GPUs with less (A100: 163 KB, most consumer cards: 99 KB) cannot run the deepest of
them. `launch` starts each kernel with its chosen `num_stages` and, if Triton reports that the
compiled kernel needs more shared memory than the device has, retries with one stage fewer
(each stage is one more buffered tile of the loop's operands), down to one; the depth that fits
is remembered per kernel, constexpr configuration and device, so the search happens once per
process.

Persistent kernels (a loop over work items in each program) take a grid sized to the GPU's
streaming multiprocessors (`persistent_grid`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from triton.runtime.errors import OutOfResources

from ...triton_interpreter import triton_interpreting

# The "SMs" a persistent grid is sized to under Triton's interpreter (CPU): a few, so that the
# tests' small problems give programs several work items each, the last program fewer.
INTERPRETER_SMS = 3

# (kernel name, device, constexpr/launch options) -> the deepest num_stages that fitted.
_STAGES_THAT_FIT: dict[tuple, int] = {}


@functools.cache
def _cuda_sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The SMs a persistent grid is sized to: `device`'s, or `INTERPRETER_SMS` under the
    interpreter."""
    return INTERPRETER_SMS if triton_interpreting() else _cuda_sm_count(device)


def persistent_grid(items: int, device: torch.device, per_sm: int) -> tuple[int]:
    """The grid of a persistent kernel over `items` work items: `per_sm` programs per SM (as
    `sm_count` counts them), no more programs than items, at least one."""
    return (max(1, min(items, per_sm * sm_count(device))),)


def _device_key(args: tuple[Any, ...]) -> str:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return str(arg.device)
    return "?"


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, num_stages: int, **options: Any) -> Any:
    """`kernel[grid](*args, num_stages=..., **options)`, with fewer stages where the device's
    shared memory needs it. Raises a ValueError naming the kernel when even one stage does not
    fit."""
    name = getattr(kernel, "__name__", None) or repr(kernel)
    stages, key = num_stages, None
    if _STAGES_THAT_FIT:  # (empty on GPUs where everything fits: no per-launch key to build)
        key = (name, _device_key(args), tuple(sorted(options.items())))
        stages = min(num_stages, _STAGES_THAT_FIT.get(key, num_stages))
    while True:
        try:
            return kernel[grid](*args, num_stages=stages, **options)
        except OutOfResources as err:
            if "shared memory" not in str(err) or stages == 1:
                raise ValueError(
                    f"SLA kernel {name} does not fit this GPU ({err}); options {options}. "
                    "Use backend='reference', or smaller block_q / block_k."
                ) from err
            stages -= 1
            key = key or (name, _device_key(args), tuple(sorted(options.items())))
            _STAGES_THAT_FIT[key] = stages
