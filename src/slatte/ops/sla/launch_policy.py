"""How the SLA op launches: which kernel family runs it, and the family's launch switches.

A `LaunchPolicy` is a frozen value that callers pass to `sparse_linear_attention`; tests and
benchmarks build their own (force a family, switch TMA off, poison outputs, try other tiles)
instead of setting module globals. `select_kernels` is the one place where a family is chosen.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from ..triton_interpreter import triton_interpreting

# "auto": the fastest family that serves the call: "hopper", else "triton", else "torch".
# "hopper": FlashAttention-4's block-sparse kernels for the sparse branch, the Triton kernels for
# the rest (`hopper/`). "triton": the fused Triton kernels. Either is an error where it cannot
# serve the call. "torch": block-sparse PyTorch ops (`blocked.py`), any float dtype, head dim and
# device. "reference": plain PyTorch with N x N matrices (`reference.py`, the executable spec),
# any float dtype, head dim and device.
KERNELS = ("auto", "hopper", "triton", "torch", "reference")

# What the Triton kernels serve. Head dims that are no power of two run on tiles of the next
# power of two, the lanes past D masked (`triton/kernels_common.py`); multiples of 8, so that
# rows of 16-bit values start on 16-byte boundaries (vector loads, TMA tensor descriptors).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = tuple(range(8, 129, 8))

# What the Hopper family serves besides that: half precision, and (block_q, block_k) that
# FlashAttention-4's SM90 kernels tile exactly; its backward only 128 x 128 blocks.
HOPPER_DTYPES = (torch.float16, torch.bfloat16)
HOPPER_HEAD_DIMS = (64, 128)
# Where "auto" takes it: measured faster than the Triton family only at D = 128 (H100,
# benchmarks/NOTES.md session 13); at D = 64 FA4's host-side launch costs more than it saves.
HOPPER_AUTO_HEAD_DIMS = (128,)
HOPPER_FORWARD_BLOCKS = ((128, 128), (128, 64))
HOPPER_TRAINING_BLOCKS = ((128, 128),)


@dataclass(frozen=True)
class LaunchPolicy:
    """How to run the SLA op.

    `kernels`: one of `KERNELS`. `tma`: let the Triton kernels read tiles through TMA tensor
    descriptors where the GPU and the strides allow (off: the pointer path that GPUs before Hopper
    run). `poison_outputs`: fill every buffer a kernel must write with NaN first, so that an
    element a kernel leaves unwritten fails a comparison instead of passing on stale memory
    (tests). `tile_overrides`: per head dim, values that replace the Triton tiles' defaults
    (keys of `triton.tiles.tiles`; benchmarks try others without editing code).
    `switches`: all but `kernels` as a string, which is how they cross the registered op's schema
    (made here, once: under torch.compile the op's caller only reads it).
    """

    kernels: str = "auto"
    tma: bool = True
    poison_outputs: bool = False
    tile_overrides: Mapping[int, Mapping[str, int | bool]] = field(default_factory=dict)
    switches: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")
        for name in ("tma", "poison_outputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        overrides = {int(d): MappingProxyType(dict(v)) for d, v in self.tile_overrides.items()}
        object.__setattr__(self, "tile_overrides", MappingProxyType(overrides))
        switches = {"tma": self.tma, "poison_outputs": self.poison_outputs}
        switches["tile_overrides"] = {str(d): dict(v) for d, v in overrides.items()}
        object.__setattr__(self, "switches", json.dumps(switches, sort_keys=True))

    def __hash__(self) -> int:  # (the read-only mappings are not hashable themselves)
        return hash((self.kernels, self.switches))

    @staticmethod
    @functools.cache
    def from_switches(kernels: str, switches: str) -> LaunchPolicy:
        """The policy of `kernels` with the `switches` of another."""
        data = json.loads(switches)
        data["tile_overrides"] = {int(d): v for d, v in data["tile_overrides"].items()}
        return LaunchPolicy(kernels, **data)


DEFAULT_POLICY = LaunchPolicy()


def _hopper_problem(
    q: torch.Tensor, blocks: tuple[int, int], training: bool, forced: bool
) -> str | None:
    """Why the Hopper family cannot (`forced`) or should not ("auto") serve this call, or None
    when it can."""
    from .hopper.fa4 import INSTALL_HINT, fa4_version

    # "auto" takes 128 x 64 blocks without gradients only when asked: not measured faster yet.
    allowed = HOPPER_TRAINING_BLOCKS if training or not forced else HOPPER_FORWARD_BLOCKS
    if q.device.type != "cuda":
        return f"needs a CUDA tensor, got device {q.device}"
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return f"needs a Hopper GPU (sm_90), got {torch.cuda.get_device_name(q.device)}"
    if q.dtype not in HOPPER_DTYPES:
        return f"supports dtypes {HOPPER_DTYPES}, got {q.dtype}"
    head_dims = HOPPER_HEAD_DIMS if forced else HOPPER_AUTO_HEAD_DIMS
    if q.shape[-1] not in head_dims:
        return f"supports head dims {head_dims}, got D={q.shape[-1]}"
    if blocks not in allowed:
        what = "with gradients" if training else "without gradients"
        return f"supports (block_q, block_k) in {allowed} {what}, got {blocks}"
    if fa4_version() is None:
        return f"needs FlashAttention-4: {INSTALL_HINT}"
    return None


def _triton_problem(q: torch.Tensor, forced: bool) -> str | None:
    """Why the Triton family cannot serve this call, or None when it can."""
    if q.device.type != "cuda" and not (forced and triton_interpreting()):
        return f"needs a CUDA tensor, got device {q.device}"
    if q.dtype not in TRITON_DTYPES:
        return f"supports dtypes {TRITON_DTYPES}, got {q.dtype}"
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        return f"supports head dims that are multiples of 8 up to 128, got D={q.shape[-1]}"
    return None


def select_kernels(
    q: torch.Tensor, policy: LaunchPolicy, blocks: tuple[int, int], training: bool
) -> str:
    """The kernel family that runs SLA on `q` (B, H, N, D) with (block_q, block_k) `blocks`,
    `training` when a gradient will be needed: "hopper", "triton", "torch" or "reference".

    "auto" takes the first of "hopper", "triton", "torch" that serves the call. Raises a
    ValueError when the policy forces a family that cannot serve it.
    """
    if policy.kernels in ("torch", "reference"):
        return policy.kernels
    triton_problem = _triton_problem(q, policy.kernels == "triton")
    if policy.kernels in ("auto", "hopper"):
        problem = triton_problem or _hopper_problem(q, blocks, training, policy.kernels == "hopper")
        if problem is None:
            return "hopper"
        if policy.kernels == "hopper":
            raise ValueError(f"kernels='hopper' {problem}; use LaunchPolicy(kernels='auto')")
    problem = triton_problem
    if problem is None:
        return "triton"
    if policy.kernels == "triton":
        raise ValueError(f"kernels='triton' {problem}; use LaunchPolicy(kernels='torch')")
    return "torch"


__all__ = [
    "DEFAULT_POLICY",
    "HOPPER_AUTO_HEAD_DIMS",
    "HOPPER_DTYPES",
    "HOPPER_FORWARD_BLOCKS",
    "HOPPER_HEAD_DIMS",
    "HOPPER_TRAINING_BLOCKS",
    "KERNELS",
    "TRITON_DTYPES",
    "TRITON_HEAD_DIMS",
    "LaunchPolicy",
    "select_kernels",
]
