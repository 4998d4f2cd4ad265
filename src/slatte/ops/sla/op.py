"""SLA's kernels as registered PyTorch ops (`slatte::sla_fwd`, `slatte::sla_bwd`) with
autograd, so that `torch.compile(fullgraph=True)` sees one opaque node per direction.

The ops run the kernel family named by their `kernels` argument with the launch policy's
switches (`LaunchPolicy.switches`: the schema takes no objects); `fused_sla` is how the public
function calls them. Everything here works on (B, H, N, D) tensors that may be strided views (the bnhd
layout); the kernels read strides. Only the feature dim must be contiguous.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from .config import SLAConfig, block_counts
from .launch_policy import LaunchPolicy


def _launchers(kernels: str) -> ModuleType:
    """The launchers of a kernel family (imported here: Triton and FlashAttention-4 are
    optional)."""
    if kernels == "triton":
        from .triton import launchers
    elif kernels == "hopper":
        from .hopper import launchers
    else:
        raise ValueError(f"the SLA op runs a kernel family ('triton', 'hopper'), got {kernels!r}")
    return launchers


def fused_sla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    config: SLAConfig,
    scale: float | None,
    kernels: str,
    policy: LaunchPolicy,
    training: bool,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SLA of (B, H, N, D) q, k, v through the op, on the kernel family `kernels` (chosen by
    `launch_policy.select_kernels`) with `policy`'s switches; `training`: a gradient will be
    needed, so the forward keeps what the backward reads. `return_lse` (inference): also the
    sparse branch's log-sum-exp (B, H, N), fp32, natural log, which the forward stores alone
    (`store_lse`), without the backward's state."""
    n, d = q.shape[-2], q.shape[-1]
    n_crit, n_negl = block_counts(config.critical, config.negligible, -(-n // config.block_k))
    # The kernels index the feature dim with stride 1 and the projection as a dense fp32 matrix.
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if proj_weight is not None:
        proj_weight = proj_weight.float().contiguous()
    if proj_bias is not None:
        proj_bias = proj_bias.float().contiguous()
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    outs = sla_fwd(
        q, k, v, proj_weight, proj_bias, n_crit, n_negl, config.block_q, config.block_k,
        config.feature_map, config.linear_scope, scale, training, return_lse, kernels,
        policy.switches,
    )  # fmt: skip
    if not return_lse:
        return outs[0]
    # Each family keeps the log-sum-exp in its own units (its launchers' LSE_TO_NATURAL).
    return outs[0], outs[5] * _launchers(kernels).LSE_TO_NATURAL


@torch.library.custom_op("slatte::sla_fwd", mutates_args=())
def sla_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    n_crit: int,
    n_negl: int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float,
    store_aux: bool,
    store_lse: bool,
    kernels: str,
    switches: str,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]:  # fmt: skip
    """Returns (o, bmap, crit_lut, o_s, o_l, lse, den, hsum, hsum_lo, zsum); all but o are saved
    for the backward, the last seven empty unless `store_aux` (o_l, den and the sums also
    without a linear branch, hsum_lo also without bf16 pairs); `store_lse` (inference) keeps
    lse alone, the other six empty. hsum, hsum_lo: (B*H, blocks, D, D),
    zsum: (B*H, blocks, D), one per query block, or one per head (blocks = 1) where the family's
    `shared_sums(linear_scope)`. lse: (B, H, N) in the family's units (its launchers'
    `LSE_TO_NATURAL` turns them into a natural log). `kernels`: the family that runs it; `switches`:
    `LaunchPolicy.switches`.
    """
    return _launchers(kernels).forward(
        q, k, v, proj_weight, proj_bias, n_crit, n_negl, block_q, block_k, feature_map,
        linear_scope, scale, store_aux, store_lse, LaunchPolicy.from_switches(kernels, switches),
    )  # fmt: skip


@sla_fwd.register_fake
def _(q, k, v, proj_weight, proj_bias, n_crit, n_negl, block_q, block_k, feature_map,
      linear_scope, scale, store_aux, store_lse, kernels, switches):  # fmt: skip
    family = _launchers(kernels)
    empty = family.empty_aux
    b, h, n, d = q.shape
    nk = math.ceil(n / block_k)
    linear = family.has_linear(nk, n_crit, n_negl, linear_scope, proj_weight is not None)
    bmap = q.new_empty(b, h, math.ceil(n / block_q), nk, dtype=torch.int8)
    crit_lut = q.new_empty(b, h, math.ceil(n / block_q), min(n_crit, nk), dtype=torch.int32)
    f32 = torch.float32
    o_s = q.new_empty(b, h, n, d) if store_aux else empty(q)
    o_l = q.new_empty(b, h, n, d, dtype=f32) if store_aux and linear else empty(q)
    lse = q.new_empty(b, h, n, dtype=f32) if store_aux or store_lse else empty(q)
    den = q.new_empty(b, h, n, dtype=f32) if store_aux and linear else empty(q)
    n_sums = 1 if family.shared_sums(linear_scope) else math.ceil(n / block_q)
    pair = store_aux and linear and family.bf16_pairs(q.dtype)
    # (outputs may not alias one another: each empty one is its own tensor)
    hsum, hsum_lo, zsum = empty(q), empty(q), empty(q)
    if store_aux and linear:
        hsum = q.new_empty(b * h, n_sums, d, d, dtype=family.pair_dtype() if pair else f32)
        zsum = q.new_empty(b * h, n_sums, d, dtype=f32)
    if pair:
        hsum_lo = torch.empty_like(hsum)
    return torch.empty_like(q), bmap, crit_lut, o_s, o_l, lse, den, hsum, hsum_lo, zsum


@torch.library.custom_op("slatte::sla_bwd", mutates_args=())
def sla_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    has_bias: bool,
    bmap: torch.Tensor,
    crit_lut: torch.Tensor,
    o_s: torch.Tensor,
    o_l: torch.Tensor,
    lse: torch.Tensor,
    den: torch.Tensor,
    hsum: torch.Tensor,
    hsum_lo: torch.Tensor,
    zsum: torch.Tensor,
    n_crit: int,
    n_negl: int,
    block_q: int,
    block_k: int,
    feature_map: str,
    linear_scope: str,
    scale: float,
    kernels: str,
    switches: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, d proj_weight, d proj_bias); the last two are empty when there is
    no projection / bias. hsum, hsum_lo, zsum: the forward's exact H_i (pair), Z_i."""
    return _launchers(kernels).backward(
        do, q, k, v, proj_weight, has_bias, bmap, crit_lut, o_s, o_l, lse, den, hsum, hsum_lo,
        zsum, n_crit, n_negl, block_q, block_k, feature_map, linear_scope, scale,
        LaunchPolicy.from_switches(kernels, switches),
    )  # fmt: skip


@sla_bwd.register_fake
def _(do, q, k, v, proj_weight, has_bias, bmap, crit_lut, o_s, o_l, lse, den, hsum, hsum_lo, zsum,
      n_crit, n_negl, block_q, block_k, feature_map, linear_scope, scale, kernels,
      switches):  # fmt: skip
    empty = _launchers(kernels).empty_aux
    dw = torch.empty_like(proj_weight) if proj_weight is not None else empty(q)
    db = q.new_empty(q.shape[-1], dtype=torch.float32) if has_bias else empty(q)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dw, db


_FWD_ARGS = ("n_crit", "n_negl", "block_q", "block_k", "feature_map", "linear_scope", "scale")


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, proj_weight, proj_bias, *opts, _store_aux, _store_lse, kernels, switches = inputs
    _o, *saved = output
    ctx.save_for_backward(q, k, v, proj_weight, *saved)
    ctx.opts = dict(zip(_FWD_ARGS, opts, strict=True))
    ctx.launch = dict(kernels=kernels, switches=switches)
    ctx.has_bias = proj_bias is not None
    # The outputs after o are saved state, never differentiated: without this autograd would
    # fill a zero gradient for each of them (their bytes again).
    ctx.set_materialize_grads(False)


def _backward(ctx, do, *_unused_grads):
    q, k, v, proj_weight, *saved = ctx.saved_tensors
    dq, dk, dv, dw, db = sla_bwd(
        do, q, k, v, proj_weight, ctx.has_bias, *saved, **ctx.opts, **ctx.launch
    )
    return (
        dq, dk, dv,
        dw if proj_weight is not None else None,
        db if ctx.has_bias else None,
        None, None, None, None, None, None, None, None, None, None, None,
    )  # fmt: skip


sla_fwd.register_autograd(_backward, setup_context=_setup_context)
