"""Joint SLA (diffusers_joint.py): without gradients the mass of the critical video blocks is the
SLA op's own log-sum-exp (`return_lse`); with gradients it is computed again in PyTorch
(`critical_log_mass`). Both give the same attention outputs, for every joint model's attention
(text padding included), on both SLA backends. The video queries' merge with the text keys
(`video_over_text`, one attention call with a virtual key) against the merged softmax written
out, in float64, float32 and bf16, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree
from diffusers_testing import (
    attention_inputs,
    model_inputs,
    randomize_projections,
    tiny_cogvideox,
    tiny_hunyuan,
    tiny_hunyuan15,
    tiny_mochi,
)
from torch.utils._python_dispatch import TorchDispatchMode

from slatte.integrations.diffusers_joint import critical_log_mass, joint_sla, video_over_text
from slatte.integrations.diffusers_sla import enable_sla
from slatte.nn.sla import SparseLinearAttention
from slatte.ops import SLAConfig, sparse_linear_attention

# (model, its tiny builder, the attention module's path)
ATTENTIONS = [
    ("hunyuan", tiny_hunyuan, "transformer_blocks.0.attn"),
    ("hunyuan", tiny_hunyuan, "single_transformer_blocks.0.attn"),
    ("hunyuan15", tiny_hunyuan15, "transformer_blocks.0.attn"),
    ("cogvideox", tiny_cogvideox, "transformer_blocks.1.attn1"),
    ("mochi", tiny_mochi, "transformer_blocks.0.attn1"),
]


@pytest.mark.parametrize("backend", ["sla", "sla_reference"])
@pytest.mark.parametrize(("name", "build", "path"), ATTENTIONS)
def test_the_ops_lse_gives_what_the_differentiable_mass_gives(name, build, path, backend):
    model, inputs = build(), model_inputs(name)
    attn = model.get_submodule(path)
    seen = attention_inputs(model, attn, inputs)
    # 2 of the 3 video key blocks critical, the rest in the linear branch.
    enable_sla(model, critical=2, negligible=0, block_q=16, block_k=16, backend=backend)
    randomize_projections(model)
    with torch.no_grad():
        fast = attn(**seen)
    with torch.enable_grad():
        differentiable = attn(**seen)
    assert differentiable[0].requires_grad  # (the path that computes the mass again)
    for got, want in zip(fast, differentiable, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The video queries' merge with the text keys: one attention call with a virtual key
# ---------------------------------------------------------------------------------------------


def _merged_by_hand(q, k_t, v_t, text_mask, o_sla, log_mass):
    """The merged softmax written out: [log_mass, text scores] as one row of logits, its weights
    on [o_sla, text values], in q's dtype; (B, Nv, H, D)."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k_t) / math.sqrt(q.shape[-1])
    if text_mask is not None:
        scores = scores.masked_fill(~text_mask[:, None, None, :], float("-inf"))
    p = torch.cat([log_mass[..., None].to(scores.dtype), scores], dim=-1).softmax(-1)
    out = p[..., :1] * o_sla.transpose(1, 2) + p[..., 1:] @ v_t.transpose(1, 2)
    return out.transpose(1, 2)


def _merge_inputs(dtype, shift, d=16, nv=40, nt=7, seed=0):
    """q, k_t, v_t, text_mask (the second prompt's last 3 text keys padded), o_sla, log_mass:
    the video mass `shift` above the text keys' log-sum-exp (text-dominated below 0)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, nv, 2, d, generator=g, dtype=torch.float64) * 1.5
    k_t, v_t, o_sla = (
        torch.randn(2, n, 2, d, generator=g, dtype=torch.float64) for n in (nt, nt, nv)
    )
    text_mask = torch.ones(2, nt, dtype=torch.bool)
    text_mask[1, -3:] = False
    text_lse = (torch.einsum("bnhd,bmhd->bhnm", q, k_t) / math.sqrt(d)).logsumexp(-1)
    log_mass = text_lse + shift + torch.randn(text_lse.shape, generator=g, dtype=torch.float64)
    return (*(x.to(dtype) for x in (q, k_t, v_t)), text_mask, o_sla.to(dtype), log_mass.float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("shift", [-6.0, 0.0, 8.0])
@pytest.mark.parametrize("d", [16, 72])
def test_video_over_text_is_the_merged_softmax(dtype, masked, shift, d):
    q, k_t, v_t, text_mask, o_sla, log_mass = _merge_inputs(dtype, shift, d)
    text_mask = text_mask if masked else None
    got = video_over_text(q, k_t, v_t, text_mask, o_sla, log_mass)
    assert got.dtype == dtype and got.shape == q.shape
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    want = _merged_by_hand(q, k_t, v_t, text_mask, o_sla, log_mass)
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


# bf16's unit roundoff: the largest relative error of one rounding to bf16.
BF16_U = 2.0**-8


@pytest.mark.parametrize("shift", [-6.0, -1.0, 0.0, 2.0, 8.0])
@pytest.mark.parametrize("d", [16, 128])
def test_video_over_text_in_bf16_errs_about_as_much_as_its_output_rounding(shift, d):
    """Against float64, whichever side (video or text) holds most of the softmax mass: the
    error stays within a few roundings of the exact result to bf16, as the model's own bf16
    attention (the weights rounded to bf16 in the attention kernel, its output, the sum with
    w * O_sla: up to three roundings, the mean within two)."""
    inputs = _merge_inputs(torch.bfloat16, shift, d, seed=1)
    truth = _merged_by_hand(*(x.double() if x.is_floating_point() else x for x in inputs))
    rounding = (truth.bfloat16().double() - truth).abs()
    err = (video_over_text(*inputs).double() - truth).abs()
    assert err.max() <= 3 * rounding.max(), (err.max().item(), rounding.max().item())
    assert err.mean() <= 2 * rounding.mean(), (err.mean().item(), rounding.mean().item())


@pytest.mark.parametrize("shift", [-6.0, -1.0, 0.0, 2.0, 8.0])
def test_video_over_text_in_bf16_weighs_o_sla_to_its_rounding(shift):
    """With zero text values and O_sla = 1 the output is the virtual key's weight w itself.
    The mass reaches the logits to ~fp32 accuracy through its hi and lo columns (log_mass /
    scale, ~10-100 here, in one bf16 number would be off by up to half a bf16 step: several
    roundings of w), and w is read from the better-rounded of the two weight columns (1 - the
    text's weight would lose a small w): its relative error stays within two roundings."""
    q, k_t, v_t, text_mask, o_sla, log_mass = _merge_inputs(torch.bfloat16, shift, 128, seed=2)
    v_t, o_sla = torch.zeros_like(v_t), torch.ones_like(o_sla)
    w = _merged_by_hand(q.double(), k_t.double(), v_t.double(), text_mask, o_sla.double(), log_mass)
    got = video_over_text(q, k_t, v_t, text_mask, o_sla, log_mass).double()
    assert ((got - w).abs() / w).max() <= 2 * BF16_U


def test_video_over_text_gradients():
    """Every input's gradient, the per-query mass's included (it reaches the logits through
    its hi and lo columns, each exactly once)."""
    q, k_t, v_t, text_mask, o_sla, log_mass = _merge_inputs(torch.float64, 0.0, 8, 6, 4)
    leaves = [x.requires_grad_() for x in (q, k_t, v_t, o_sla, log_mass.double())]

    def f(q, k_t, v_t, o_sla, log_mass):
        return video_over_text(q, k_t, v_t, text_mask, o_sla, log_mass)

    assert torch.autograd.gradcheck(f, leaves)


def test_video_over_text_builds_no_text_score_matrix():
    """The text part is one attention call: no (Nv x Nt) or (Nv x (Nt + 1)) tensor is made."""
    q, k_t, v_t, text_mask, o_sla, log_mass = _merge_inputs(torch.float32, 0.0)
    nv, nt = q.shape[1], k_t.shape[1]
    sla = SparseLinearAttention(16, SLAConfig(critical=1, negligible=0, block_q=16, block_k=16))
    shapes = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes.extend(x.shape for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor))
            return out

    with torch.no_grad(), Shapes():
        joint_sla(sla, (q, q, q), (k_t, k_t, v_t), text_mask)
    scores = [s for s in shapes if nv in s and (nt in s or nt + 1 in s)]
    assert not scores, f"text scores built: {scores}"
    assert shapes  # (the mode saw the ops)


@pytest.mark.parametrize(("name", "build", "path"), ATTENTIONS)
def test_backward_equals_the_merged_softmax_on_each_joint_attention(name, build, path):
    """float64 tiny models under autograd (the mass from `critical_log_mass`): the attention's
    outputs and its parameters' gradients, SLA projection included, match the merged softmax
    written out by hand."""
    model, inputs = build().double(), model_inputs(name)
    inputs = pytree.tree_map_only(
        torch.Tensor, lambda x: x.double() if x.is_floating_point() else x, inputs
    )
    attn = model.get_submodule(path)
    seen = attention_inputs(model, attn, inputs)
    enable_sla(model, critical=2, negligible=0, block_q=16, block_k=16)
    randomize_projections(model)
    joint = attn.processor.joint

    def by_hand():
        q_v, k_v, v_v, q_t, k_t, v_t, text_mask = joint.qkv(
            attn, seen["hidden_states"], seen["encoder_hidden_states"],
            seen.get("attention_mask"), seen.get("image_rotary_emb"),
        )  # fmt: skip
        sla = attn.sla
        o_sla = sparse_linear_attention(
            q_v, k_v, v_v, sla.proj_l.weight, sla.proj_l.bias, sla.config, layout="bnhd"
        )
        log_mass = critical_log_mass(q_v, k_v, sla.config)
        video = _merged_by_hand(q_v, k_t, v_t, text_mask, o_sla, log_mass)
        _, text = joint_sla(
            sla, (q_v, k_v, v_v), (q_t, k_t, v_t), text_mask, joint.mask_text_queries
        )
        return joint.output(attn, video.flatten(2), text.flatten(2))

    params = [p for p in attn.parameters() if p.requires_grad]
    results = []
    for forward in (lambda: attn(**seen), by_hand):
        outs = forward()
        g = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
        results.append((outs, torch.autograd.grad(loss, params)))
    (outs, grads), (want_outs, want_grads) = results
    for got, want in zip(outs, want_outs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    assert any(p is attn.sla.proj_l.weight for p in params)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
