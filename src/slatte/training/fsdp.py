"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for video transformers whose blocks are the
`blocks` list (slatte's VideoDiT, diffusers' Wan): each process holds 1/N of every parameter,
gradient and optimizer state; a block's full weights exist only while it runs.

Sharding unit: one transformer block (its parameters are gathered together right before the
block runs and freed after it), then the root for the embeddings and the final layer. The SLA
projections `proj_l` form units of their own that stay in fp32 under a bf16 policy (the SLA spec
keeps them fp32). Activation checkpointing is the model's own (`enable_gradient_checkpointing`,
non-reentrant `torch.utils.checkpoint` per block), which composes with FSDP2: the recomputation
in backward gathers the block's weights again through the same hooks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..nn.sla import SparseLinearAttention

FSDP_PRECISIONS = ("fp32", "bf16")


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """bf16: parameters gathered and used in bf16, gradients reduced in fp32 (summing many bf16
    gradients loses the small ones); fp32: no casting."""
    if precision not in FSDP_PRECISIONS:
        raise ValueError(
            f"FSDP supports precision {FSDP_PRECISIONS}, got {precision!r} (fp16 needs a "
            "sharded grad scaler; use bf16)"
        )
    if precision == "fp32":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_model(
    model: nn.Module,
    *,
    precision: str = "fp32",
    mesh: DeviceMesh | None = None,
    reshard_after_forward: bool = True,
    sla_units: bool = True,
) -> nn.Module:
    """Shard `model` in place with FSDP2 (per block, then the root) and return it.

    Needs an initialised default process group (or a 1-D `mesh`). The parameters become DTensors;
    build the optimizer after this call. A copy made before this call (the EMA) sharded the same
    way (any precision) gets local shards that line up one to one with the model's, so the EMA
    update stays local. `reshard_after_forward=False` keeps each block's full
    weights from forward to backward (ZeRO-2-like: more memory, one all-gather less per block).
    `sla_units=False` leaves the SLA projections in their block's unit, for models whose
    attention reads `sla.proj_l` without calling the SLA module (diffusers' SLA processor):
    the hooks of a unit of their own would never gather them. Under bf16 they are then
    gathered in bf16 (the op still computes the projection in fp32).
    """
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise ValueError(
            "shard_model expects a transformer with its blocks in a `blocks` ModuleList "
            f"(VideoDiT, WanTransformer3DModel), got {type(model).__name__}"
        )
    policy = mixed_precision_policy(precision)
    # fp32 projections take the layer's (bf16) q, k, v as they are: no input cast.
    fp32_policy = MixedPrecisionPolicy(cast_forward_inputs=False)
    for module in model.modules() if sla_units else ():
        if isinstance(module, SparseLinearAttention):
            fully_shard(
                module,
                mesh=mesh,
                mp_policy=fp32_policy,
                reshard_after_forward=reshard_after_forward,
            )
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again right at the start of backward: keep them.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


__all__ = ["FSDP_PRECISIONS", "mixed_precision_policy", "shard_model"]
