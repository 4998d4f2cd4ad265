"""SLA for joint attention: transformers whose self-attention runs over one sequence of video
and text tokens (HunyuanVideo's dual- and single-stream blocks, HunyuanVideo-1.5, CogVideoX,
Mochi).

SLA applies to the video-to-video part only; everything that touches text stays exact:
- video queries over video keys go through SLA (`sparse_linear_attention`, output O_sla);
- video queries over text keys are dense. The two are merged as one softmax in which the video
  keys take part as a single extra key: its logit is the log of the softmax mass of the
  critical video blocks (the sparse branch's log-sum-exp, which the kernels return without
  gradients; `critical_log_mass` computes it again where a gradient is needed) and its value
  is O_sla. That softmax is one attention call over the text keys and this virtual key
  (`video_over_text`). With zero projections this is exact softmax attention over the critical
  video blocks and all text keys; with every block critical it is the model's own joint
  attention;
- text queries attend densely to every key, video and text.
Text key padding (HunyuanVideo's attention mask) masks text keys for both kinds of query.

Each model states where its q, k, v and outputs come from in a `JointAttention` (its
`ModelSpec.joint`): `qkv(attn, hidden_states, encoder_hidden_states, attention_mask, rotary)`
gives the video and text q, k, v (B, N, H, D) and the text key mask (B, Nt) (None: no padding),
and `output(attn, video, text)` the attention module's outputs from the per-token results
(B, N, H·D). The same two functions give STG's identity attention map (every token its own
value) for these models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.sla import SparseLinearAttention
from ..ops.attention import SLA_POLICIES
from ..ops.sla import SLAConfig, needs_gradient, sla_block_map, sparse_linear_attention
from ..ops.sla.blocked import critical_lse

JointQKV = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor | None,
]  # fmt: skip

# `video_over_text` pads its feature dims to a multiple of this: the flash and cuDNN attention
# kernels take head dims in steps of 8.
_HEAD_DIM_STEP = 8


@dataclass(frozen=True)
class JointAttention:
    """Where a joint attention's video and text q, k, v come from and where its outputs go."""

    qkv: Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, Any], JointQKV]
    output: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    # Padded text tokens also attend to nothing as queries and output zero (HunyuanVideo-1.5
    # masks both ways; Mochi drops them).
    mask_text_queries: bool = False

    def identity_map(
        self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's outputs under the identity attention map (each token its own value)."""
        _, _, v_v, _, _, v_t, _ = self.qkv(attn, hidden_states, encoder_hidden_states, None, None)
        return self.output(attn, v_v.flatten(2), v_t.flatten(2))


# ---------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------


def critical_log_mass(q: torch.Tensor, k: torch.Tensor, config: SLAConfig) -> torch.Tensor:
    """log Σ exp(q·k / sqrt(D)) over the keys of each query's critical blocks (the block map
    SLA chooses for these q, k), at least fp32 (B, H, N), for q, k (B, N, H, D)."""
    critical = sla_block_map(q, k, config, layout="bnhd") == 1  # (B, H, Nq, Nk)
    n_crit = int(critical[0, 0, 0].sum())  # the same count in every row (spec, section 1)
    lut = critical.to(torch.int8).topk(n_crit, dim=-1).indices.flatten(0, 1)  # (B*H, Nq, n_crit)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    return critical_lse(q, k, lut, config.block_q, config.block_k, q.shape[-1] ** -0.5)


def video_over_text(
    q: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    text_mask: torch.Tensor | None,
    o_sla: torch.Tensor,
    log_mass: torch.Tensor,
) -> torch.Tensor:
    """The video queries' joint output: one softmax over the text keys and a virtual key whose
    logit is `log_mass` (B, H, Nv) and whose value is `o_sla`, as one
    `scaled_dot_product_attention` call over Nt + 1 keys (no fp32 Nv x Nt scores).

    q, o_sla: (B, Nv, H, D); k_t, v_t: (B, Nt, H, D); text_mask: (B, Nt) bool (True: real) or
    None. Two feature columns carry the per-query logit: q gets log_mass / scale split into a
    hi and a lo part of the activations' dtype (so that half-precision tensor cores see it to
    ~fp32 accuracy), the text keys zeros there, the virtual key ones. The values' two extra
    columns give the text keys' total weight 1 - w (text values 1) and the virtual key's w (its
    value 1); the output is rounded to the activations' dtype, so w is taken from whichever of
    the two is smaller (its rounding error is the smaller one). Returns
    o[:D] + w * o_sla, (B, Nv, H, D) in q's dtype. Differentiable in every input."""
    b, _, h, d = q.shape
    width = -(-(d + 2) // _HEAD_DIM_STEP) * _HEAD_DIM_STEP
    scale = 1.0 / math.sqrt(d)

    def widened(x: torch.Tensor, *columns: torch.Tensor) -> torch.Tensor:
        # x (B, N, H, D), then the columns (each broadcast to (B, N, H, 1)), then zeros: one copy
        rows = x.shape[:-1]
        extra = [c.expand(*rows, 1) for c in columns]
        return torch.cat([x, *extra, x.new_zeros(*rows, width - d - len(columns))], dim=-1)

    wide = torch.promote_types(q.dtype, torch.float32)  # (the arithmetic around the call)
    logit = log_mass.transpose(1, 2)[..., None].to(wide) / scale  # (B, Nv, H, 1)
    hi = logit.to(q.dtype)
    lo = (logit - hi).to(q.dtype)
    unit = torch.eye(width, dtype=q.dtype, device=q.device)
    virtual_key, virtual_value = unit[d] + unit[d + 1], unit[d + 1]
    keys = torch.cat([widened(k_t), virtual_key.expand(b, 1, h, width)], dim=1)
    values = torch.cat(
        [widened(v_t, v_t.new_ones(1)), virtual_value.expand(b, 1, h, width)], dim=1
    )  # (B, Nt + 1, H, width)
    key_mask = None
    if text_mask is not None:  # the virtual key is always real
        key_mask = torch.cat([text_mask, text_mask.new_ones(b, 1)], dim=1)[:, None, None, :]
    o = F.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (widened(q, hi, lo), keys, values)),
        attn_mask=key_mask,
        scale=scale,
    ).transpose(1, 2)  # (B, Nv, H, width)
    text_weight, w = o[..., d : d + 1].to(wide), o[..., d + 1 : d + 2].to(wide)
    w = torch.where(w <= text_weight, w, 1 - text_weight)
    return (o[..., :d].to(wide) + w * o_sla.to(wide)).to(q.dtype)


def joint_sla(
    sla: SparseLinearAttention,
    video: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    text: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    text_mask: torch.Tensor | None,
    mask_text_queries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention with SLA on its video-to-video part (module docstring).

    video, text: (q, k, v), each (B, N, H, D) with N = Nv or Nt; text_mask: (B, Nt) bool, True
    for real text keys, or None; `mask_text_queries`: padded text queries attend to nothing
    and output zero (the model's own attention gives them that). Returns the video and text outputs
    (B, N, H, D)."""
    (q_v, k_v, v_v), (q_t, k_t, v_t) = video, text
    sla_args = (q_v, k_v, v_v, sla.proj_l.weight, sla.proj_l.bias, sla.config)
    policy = SLA_POLICIES[sla.backend]
    if needs_gradient(*sla_args[:5]):  # (where `return_lse` is refused)
        # The kernels' log-sum-exp has no gradient: the mass is computed again, differentiably.
        o_sla = sparse_linear_attention(*sla_args, layout="bnhd", policy=policy)
        log_mass = critical_log_mass(q_v, k_v, sla.config)  # (B, H, Nv)
    else:  # the sparse branch's own log-sum-exp is that mass
        o_sla, log_mass = sparse_linear_attention(
            *sla_args, layout="bnhd", policy=policy, return_lse=True
        )
    o_video = video_over_text(q_v, k_t, v_t, text_mask, o_sla, log_mass)

    keys, values = (torch.cat([a, b], dim=1).transpose(1, 2) for a, b in ((k_v, k_t), (v_v, v_t)))
    key_mask = None
    if text_mask is not None:
        video_keys = text_mask.new_ones(text_mask.shape[0], k_v.shape[1])
        key_mask = torch.cat([video_keys, text_mask], dim=1)[:, None, None, :]
        if mask_text_queries:
            key_mask = key_mask & text_mask[:, None, :, None]
    o_text = F.scaled_dot_product_attention(q_t.transpose(1, 2), keys, values, attn_mask=key_mask)
    o_text = o_text.transpose(1, 2)
    if mask_text_queries and text_mask is not None:  # rows with every key masked: zero
        o_text = o_text.masked_fill(~text_mask[:, :, None, None], 0.0)
    return o_video, o_text


class JointSLAAttnProcessor:
    """A joint attention's processor with SLA on the video-to-video part; remembers the
    processor it replaced so that `disable_sla` can restore it."""

    def __init__(self, joint: JointAttention, original: Any):
        self.joint = joint
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            raise ValueError(
                "JointSLAAttnProcessor serves joint video + text attention; it was called "
                "without encoder_hidden_states"
            )
        q_v, k_v, v_v, q_t, k_t, v_t, text_mask = self.joint.qkv(
            attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
        )
        o_v, o_t = joint_sla(
            attn.sla, (q_v, k_v, v_v), (q_t, k_t, v_t), text_mask, self.joint.mask_text_queries
        )
        return self.joint.output(
            attn, o_v.flatten(2).type_as(hidden_states), o_t.flatten(2).type_as(hidden_states)
        )


# ---------------------------------------------------------------------------------------------
# Per-model layouts
# ---------------------------------------------------------------------------------------------


def _heads(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(2, (attn.heads, -1))  # (B, N, H·D) -> (B, N, H, D)


def _normed(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _text_key_mask(mask: torch.Tensor | None, n_video: int) -> torch.Tensor | None:
    """A boolean key mask over the joint sequence ((B, N) or (B, 1, 1, N)) → its text part
    (B, Nt); the video keys must all be real."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"joint SLA expects a boolean key mask, got dtype {mask.dtype}")
    keys = mask.reshape(mask.shape[0], -1)
    if not keys[:, :n_video].all():
        raise ValueError("joint SLA cannot mask video keys; only text padding is supported")
    return keys[:, n_video:]


def _shared_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One projection of a joint sequence, per-head qk norms: q, k, v (B, N, H, D)."""
    q = _normed(attn.norm_q, _heads(attn, attn.to_q(x)))
    k = _normed(attn.norm_k, _heads(attn, attn.to_k(x)))
    return q, k, _heads(attn, attn.to_v(x))


def _two_stream_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Dual-stream attention: video and text each with their own projections and per-head qk
    norms (HunyuanVideo, Mochi); q, k, v of the video, then of the text, (B, N, H, D)."""
    text = encoder_hidden_states
    return (
        *_shared_qkv(attn, hidden_states),
        _normed(attn.norm_added_q, _heads(attn, attn.add_q_proj(text))),
        _normed(attn.norm_added_k, _heads(attn, attn.add_k_proj(text))),
        _heads(attn, attn.add_v_proj(text)),
    )


def _rotated(q: torch.Tensor, k: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' rotary embedding ((cos, sin), each (N, D)) on the video q, k (B, N, H, D)."""
    if rotary is None:
        return q, k
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)


def _hunyuan_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None, rotary: Any,
) -> JointQKV:  # fmt: skip
    n_video = hidden_states.shape[1]
    if attn.add_q_proj is None:  # single-stream block: one projection of [video; text]
        qkv = _shared_qkv(attn, torch.cat([hidden_states, encoder_hidden_states], dim=1))
        n_text = encoder_hidden_states.shape[1]
        (q_v, q_t), (k_v, k_t), (v_v, v_t) = (t.split([n_video, n_text], 1) for t in qkv)
    else:
        q_v, k_v, v_v, q_t, k_t, v_t = _two_stream_qkv(attn, hidden_states, encoder_hidden_states)
    q_v, k_v = _rotated(q_v, k_v, rotary)  # the video tokens only
    return q_v, k_v, v_v, q_t, k_t, v_t, _text_key_mask(attention_mask, n_video)


def _hunyuan_output(
    attn: nn.Module, video: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(attn, "to_out", None) is not None:  # single-stream blocks project outside
        video = attn.to_out[1](attn.to_out[0](video))
    if getattr(attn, "to_add_out", None) is not None:
        text = attn.to_add_out(text)
    return video, text


HUNYUAN_VIDEO = JointAttention(qkv=_hunyuan_qkv, output=_hunyuan_output)


def _hunyuan15_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None, rotary: Any,
) -> JointQKV:  # fmt: skip
    # HunyuanVideo-1.5's dual-stream attention is HunyuanVideo's; its mask is the text one.
    qkv = _hunyuan_qkv(attn, hidden_states, encoder_hidden_states, None, rotary)
    return *qkv[:6], None if attention_mask is None else attention_mask.bool()


HUNYUAN_VIDEO_15 = JointAttention(
    qkv=_hunyuan15_qkv, output=_hunyuan_output, mask_text_queries=True
)


def _cogvideox_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None, rotary: Any,
) -> JointQKV:  # fmt: skip
    if attention_mask is not None:
        raise ValueError("CogVideoX's joint attention takes no attention mask; one was given")
    # One projection of [text; video] (text first), per-head qk norms, rotary on the video.
    n_text = encoder_hidden_states.shape[1]
    qkv = _shared_qkv(attn, torch.cat([encoder_hidden_states, hidden_states], dim=1))
    (q_t, q_v), (k_t, k_v), (v_t, v_v) = (t.split([n_text, hidden_states.shape[1]], 1) for t in qkv)
    q_v, k_v = _rotated(q_v, k_v, rotary)
    return q_v, k_v, v_v, q_t, k_t, v_t, None


def _cogvideox_output(
    attn: nn.Module, video: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(attn.to_out[1](attn.to_out[0](x)) for x in (video, text))


COGVIDEOX = JointAttention(qkv=_cogvideox_qkv, output=_cogvideox_output)


def _mochi_rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's rotation of (even, odd) pairs, in fp32, by its (cos, sin) tables (N, H, D / 2)."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    pairs = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return pairs.flatten(-2).to(x.dtype)


def _mochi_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None, rotary: Any,
) -> JointQKV:  # fmt: skip
    q_v, k_v, v_v, q_t, k_t, v_t = _two_stream_qkv(attn, hidden_states, encoder_hidden_states)
    if rotary is not None:
        q_v, k_v = _mochi_rotated(q_v, *rotary), _mochi_rotated(k_v, *rotary)
    # Mochi attends over each prompt's real tokens only: the mask is a (B, Nt) text mask.
    text_mask = None if attention_mask is None else attention_mask.bool()
    return q_v, k_v, v_v, q_t, k_t, v_t, text_mask


MOCHI = JointAttention(qkv=_mochi_qkv, output=_hunyuan_output, mask_text_queries=True)
