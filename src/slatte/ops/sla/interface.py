"""Public SLA functions: input validation, layout handling and backend dispatch."""

from __future__ import annotations

import math

import torch

from ..triton_interpreter import triton_interpreting
from . import block_map as _block_map
from .config import BLOCK_SIZES, FEATURE_MAPS, LINEAR_SCOPES, block_counts, validate_fractions
from .reference import sla_reference

# The Triton kernels' dtypes and head dims (kept here so that the reference path never needs
# Triton to be importable).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (16, 32, 64, 128)

LAYOUTS = ("bhnd", "bnhd")
BACKENDS = ("auto", "triton", "reference")


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    # (B, N, H, D) -> (B, H, N, D) as a view: the kernels read strides, the reference does not care.
    return x.transpose(1, 2) if layout == "bnhd" else x


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


def _check_blocks(block_q: int, block_k: int) -> None:
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or value not in BLOCK_SIZES:
            raise ValueError(f"{name} must be one of {BLOCK_SIZES}, got {value!r}")


def sla_block_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    critical: float | int = 0.05,
    negligible: float | int = 0.10,
    block_q: int = 64,
    block_k: int = 64,
    layout: str = "bhnd",
) -> torch.Tensor:
    """SLA's block classification, int8 (B, H, Nq, Nk): 1 critical, 0 marginal, -1 negligible.

    q, k: (B, H, N, D) (or (B, N, H, D) with `layout="bnhd"`); Nq = ceil(N / block_q),
    Nk = ceil(N / block_k). `critical` / `negligible`: a float is a fraction of Nk, an int a count
    of key blocks. See `shared/specs/SLA.md`, section 1.
    """
    if not _is_compiling():
        _check_qk(q, k, layout)
        _check_blocks(block_q, block_k)
        validate_fractions(critical, negligible)
    return _block_map.block_map(
        _to_bhnd(q, layout),
        _to_bhnd(k, layout),
        critical=critical,
        negligible=negligible,
        block_q=block_q,
        block_k=block_k,
    )


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    critical: float | int,
    negligible: float | int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float | None,
    layout: str,
    backend: str,
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
    validate_fractions(critical, negligible)
    _check_blocks(block_q, block_k)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if linear_scope not in LINEAR_SCOPES:
        raise ValueError(f"linear_scope must be one of {LINEAR_SCOPES}, got {linear_scope!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _use_triton(q: torch.Tensor, backend: str, block_q: int, block_k: int) -> bool:
    """Whether to run the Triton kernels; raises for a "triton" request they cannot serve."""
    if backend == "reference":
        return False
    problem = None
    if q.device.type != "cuda" and (backend == "auto" or not triton_interpreting()):
        problem = f"needs a CUDA tensor, got device {q.device}"
    elif q.dtype not in TRITON_DTYPES:
        problem = f"supports dtypes {TRITON_DTYPES}, got {q.dtype}"
    elif q.shape[-1] not in TRITON_HEAD_DIMS:
        problem = f"supports head dims {TRITON_HEAD_DIMS}, got D={q.shape[-1]}"
    elif min(block_q, block_k) < 16:
        problem = f"needs block_q, block_k >= 16, got {block_q}, {block_k}"
    if problem is None:
        return True
    if backend == "triton":
        raise ValueError(f"backend='triton' {problem}; use backend='reference' instead")
    return False


def _triton_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    critical: float | int,
    negligible: float | int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float | None,
) -> torch.Tensor:
    from .triton_op import sla_fwd

    n, d = q.shape[-2], q.shape[-1]
    n_crit, n_negl = block_counts(critical, negligible, -(-n // block_k))
    # The kernels index the feature dim with stride 1 and the projection as a dense fp32 matrix.
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if proj_weight is not None:
        proj_weight = proj_weight.float().contiguous()
    if proj_bias is not None:
        proj_bias = proj_bias.float().contiguous()
    grads = (q, k, v, proj_weight, proj_bias)
    store_aux = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in grads)
    return sla_fwd(
        q, k, v, proj_weight, proj_bias, n_crit, n_negl, block_q, block_k, feature_map,
        linear_scope, 1.0 / math.sqrt(d) if scale is None else float(scale), store_aux,
    )[0]  # fmt: skip


def sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    *,
    critical: float | int = 0.05,
    negligible: float | int = 0.10,
    block_q: int = 64,
    block_k: int = 64,
    feature_map: str = "softmax",
    linear_scope: str = "marginal",
    scale: float | None = None,
    layout: str = "bhnd",
    backend: str = "auto",
) -> torch.Tensor:
    """SLA sparse-linear attention (self-attention), `shared/specs/SLA.md`.

    Args:
        q, k, v: (B, H, N, D), or (B, N, H, D) with `layout="bnhd"` (read through strides, no
            copy on the Triton path). One dtype for all three.
        proj_weight, proj_bias: the linear branch's projection, (D, D) and (D,), kept in fp32 by
            its owner. `proj_weight=None` skips the linear branch: O = O_s.
        critical, negligible: a float is a fraction of the Nk = ceil(N / block_k) key blocks of
            each query-block row, an int a count of blocks.
        block_q, block_k: rows of a query / key block.
        feature_map: "softmax" (over D), "elu" (elu + 1) or "relu".
        linear_scope: which key blocks feed the linear branch: "marginal" (the paper),
            "noncritical" (official SLA-1 kernel) or "all" (official main / TurboDiffusion).
        scale: softmax scale, 1/sqrt(D) if None.
        backend: "triton" (CUDA; bf16, fp16, or fp32 with exact fp32 products; head dims 16,
            32, 64, 128; blocks >= 16), "reference" (plain PyTorch with N x N matrices, any
            float dtype and device) or "auto" (Triton where it applies, else the reference).

    Returns:
        O = O_s + proj(O_l), shaped and laid out like q, in q's dtype.
    """
    if not _is_compiling():
        _check_inputs(
            q, k, v, proj_weight, proj_bias, critical, negligible, block_q, block_k,
            feature_map, linear_scope, scale, layout, backend,
        )  # fmt: skip
    if _use_triton(q, backend, block_q, block_k):
        return _to_bhnd(
            _triton_forward(
                _to_bhnd(q, layout), _to_bhnd(k, layout), _to_bhnd(v, layout), proj_weight,
                proj_bias, critical, negligible, block_q, block_k, feature_map, linear_scope,
                scale,
            ),
            layout,
        )  # fmt: skip
    out = sla_reference(
        _to_bhnd(q, layout),
        _to_bhnd(k, layout),
        _to_bhnd(v, layout),
        proj_weight,
        proj_bias,
        critical=critical,
        negligible=negligible,
        block_q=block_q,
        block_k=block_k,
        feature_map=feature_map,
        linear_scope=linear_scope,
        scale=scale,
    )
    return _to_bhnd(out, layout)
