"""Public SLA functions: input validation, layout handling and the choice of kernels."""

from __future__ import annotations

import torch

from . import block_map as _block_map
from .blocked import sla_blocked
from .config import SLAConfig
from .launch_policy import DEFAULT_POLICY, LaunchPolicy, select_kernels
from .reference import sla_reference

LAYOUTS = ("bhnd", "bnhd")


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def needs_gradient(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will want a gradient through `tensors` (None entries ignored): what
    `sparse_linear_attention` counts as training (it keeps the backward's state then and
    refuses `return_lse`)."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def _to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    # (B, N, H, D) -> (B, H, N, D) as a view: the kernels read strides, the reference does not care.
    return x.transpose(1, 2) if layout == "bnhd" else x


def _check_config(config: SLAConfig | None) -> None:
    if config is not None and not isinstance(config, SLAConfig):
        raise ValueError(f"config must be an SLAConfig or None, got {type(config).__name__}")


def _check_qk(q: torch.Tensor, k: torch.Tensor, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({layout}), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got {q.device} and {k.device}")
    qs, ks = _to_bhnd(q, layout).shape, _to_bhnd(k, layout).shape
    if qs[2] != ks[2]:
        raise ValueError(
            f"SLA is self-attention: q has {qs[2]} tokens but k has {ks[2]}; for cross-attention "
            "use the dense backend (slatte.ops.dense_attention / backend='sdpa')"
        )
    if qs != ks:
        raise ValueError(
            f"q and k must have the same (B, H, N, D) shape, got {tuple(qs)} and {tuple(ks)}"
        )


def sla_block_map(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SLAConfig | None = None,
    *,
    layout: str = "bhnd",
) -> torch.Tensor:
    """SLA's block classification, int8 (B, H, Nq, Nk): 1 critical, 0 marginal, -1 negligible.

    q, k: (B, H, N, D) (or (B, N, H, D) with `layout="bnhd"`). `config` (`SLAConfig()` if None)
    gives the blocks: Nq = ceil(N / block_q), Nk = ceil(N / block_k), and `critical` /
    `negligible` (a float is a fraction of Nk, an int a count of key blocks). See
    `shared/specs/SLA.md`, section 1.
    """
    if not _is_compiling():
        _check_qk(q, k, layout)
        _check_config(config)
    config = SLAConfig() if config is None else config
    return _block_map.block_map(_to_bhnd(q, layout), _to_bhnd(k, layout), config)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    scale: float | None,
    layout: str,
    policy: LaunchPolicy,
) -> None:
    _check_qk(q, k, layout)
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if v.device != q.device:
        raise ValueError(f"v must be on q's device {q.device}, got {v.device}")
    d = q.shape[-1]
    if proj_weight is not None and tuple(proj_weight.shape) != (d, d):
        raise ValueError(
            f"proj_weight must have shape ({d}, {d}) (head dim D={d}), "
            f"got {tuple(proj_weight.shape)}"
        )
    if proj_bias is not None:
        if proj_weight is None:
            raise ValueError("proj_bias was given without proj_weight")
        if tuple(proj_bias.shape) != (d,):
            raise ValueError(f"proj_bias must have shape ({d},), got {tuple(proj_bias.shape)}")
    for name, p in (("proj_weight", proj_weight), ("proj_bias", proj_bias)):
        if p is not None and p.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {p.device}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    if not isinstance(policy, LaunchPolicy):
        raise ValueError(f"policy must be a LaunchPolicy or None, got {type(policy).__name__}")


def sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    config: SLAConfig | None = None,
    *,
    scale: float | None = None,
    layout: str = "bhnd",
    policy: LaunchPolicy | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SLA sparse-linear attention (self-attention), `shared/specs/SLA.md`.

    Args:
        q, k, v: (B, H, N, D), or (B, N, H, D) with `layout="bnhd"` (read through strides, no
            copy on the Triton path). One dtype for all three.
        proj_weight, proj_bias: the linear branch's projection, (D, D) and (D,), kept in fp32 by
            its owner. `proj_weight=None` skips the linear branch: O = O_s.
        config: the SLA options (`SLAConfig()` if None): `critical`, `negligible` (a float is a
            fraction of the Nk = ceil(N / block_k) key blocks of each query-block row, an int a
            count of blocks), `block_q`, `block_k`, `feature_map` and `linear_scope` ("marginal"
            as the paper, "noncritical" as the official SLA-1 kernel, "all" as official main /
            TurboDiffusion). Its `projection` belongs to the module that owns `proj_weight`.
        scale: softmax scale, 1/sqrt(D) if None.
        policy: how to launch (`LaunchPolicy()` if None). Its `kernels` picks the kernel family:
            "auto" (the fused Triton kernels where they apply, else "torch"), "triton" (CUDA, or
            the CPU under TRITON_INTERPRET=1; bf16, fp16, or fp32 with exact fp32 products; head
            dims that are multiples of 8 up to 128; an error elsewhere), "torch" (block-sparse PyTorch ops: only
            the critical blocks and per-block linear sums; any float dtype and device) or
            "reference" (plain PyTorch with N x N matrices, the executable spec).
        return_lse: also return the sparse branch's log-sum-exp, for inference: the kernels
            give it no gradient, so it is refused (ValueError) when a gradient is needed.

    Returns:
        O = O_s + proj(O_l), shaped and laid out like q, in q's dtype. With `return_lse`, the
        pair (O, lse): lse (B, H, N) in both layouts, the natural log of the sum over each
        query's critical keys of exp(scale * q.k), float32 (float64 for float64 inputs).
    """
    policy = DEFAULT_POLICY if policy is None else policy
    if not _is_compiling():
        _check_config(config)
        _check_inputs(q, k, v, proj_weight, proj_bias, scale, layout, policy)
    config = SLAConfig() if config is None else config
    q, k, v = (_to_bhnd(x, layout) for x in (q, k, v))
    training = needs_gradient(q, k, v, proj_weight, proj_bias)
    if return_lse and training:
        raise ValueError(
            "return_lse=True is for inference: the SLA kernels give its log-sum-exp no gradient, "
            "and here q, k, v or the projection require one. Call it under torch.no_grad() "
            "(or detach the inputs), or without return_lse"
        )
    kernels = select_kernels(q, policy, (config.block_q, config.block_k), training)
    if kernels == "reference":
        out = sla_reference(
            q, k, v, proj_weight, proj_bias, config, scale=scale, return_lse=return_lse
        )
    elif kernels == "torch":
        out = sla_blocked(q, k, v, proj_weight, proj_bias, config, scale, return_lse)
    else:
        from .op import fused_sla

        out = fused_sla(
            q, k, v, proj_weight, proj_bias, config, scale, kernels, policy, training, return_lse
        )
    if return_lse:
        out, lse = out
        return _to_bhnd(out, layout), lse
    return _to_bhnd(out, layout)
