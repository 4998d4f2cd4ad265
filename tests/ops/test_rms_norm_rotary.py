"""The fused Wan qk RMS norm + rotary kernel against the same steps in plain PyTorch."""

from __future__ import annotations

import pytest
import torch

from slatte.ops.rms_norm_rotary import rms_norm_rotary_qk, rotate_pairs
from slatte.ops.triton_interpreter import triton_interpreting

# The kernel runs on the GPU where there is one, else through Triton's interpreter (conftest).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, n, heads, d, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(b, n, 3 * heads * d, generator=g, device=device).to(dtype)
    q, k, _ = qkv.chunk(3, dim=-1)  # strided rows, as a fused qkv projection gives them
    wq, wk = (1 + 0.3 * torch.randn(heads * d, generator=g, device=device) for _ in range(2))
    angles = 10 * torch.randn(1, n, 1, d // 2, generator=g, device=device)
    angles = angles.repeat_interleave(2, dim=-1)  # Wan's tables hold each angle twice
    return q, k, wq.to(dtype), wk.to(dtype), angles.cos(), angles.sin()


def _expected(x, weight, cos, sin, heads, eps):
    """The model's steps: torch.nn.RMSNorm over H*D, split heads, rotate pairs."""
    norm = torch.nn.RMSNorm(x.shape[-1], eps=eps, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return rotate_pairs(norm(x).unflatten(-1, (heads, -1)), cos, sin)


@pytest.mark.parametrize(
    "b, n, heads, d", [(1, 1, 1, 16), (2, 37, 3, 32), (1, 65, 12, 16), (3, 5, 2, 64)]
)
def test_kernel_equals_module_steps(b, n, heads, d):
    assert DEVICE == "cuda" or triton_interpreting(), "the kernel must run"
    q, k, wq, wk, cos, sin = _inputs(b, n, heads, d)
    q_out, k_out = rms_norm_rotary_qk(q, k, wq, wk, cos, sin, heads, 1e-6)
    assert q_out.shape == (b, n, heads, d) and q_out.is_contiguous()
    torch.testing.assert_close(q_out, _expected(q, wq, cos, sin, heads, 1e-6))
    torch.testing.assert_close(k_out, _expected(k, wk, cos, sin, heads, 1e-6))


def _assert_half_close(out, x, weight, cos, sin, heads, eps):
    """Rounded activations: the kernel rounds once where the modules round twice (normalised,
    then weighted), so compare errors against a float64 truth: at most the modules' own."""
    truth = _expected(x.double(), weight.double(), cos.double(), sin.double(), heads, eps)
    module_err = (_expected(x, weight, cos, sin, heads, eps).double() - truth).abs().max()
    assert out.dtype == x.dtype
    assert (out.double() - truth).abs().max() <= 1.01 * module_err


def test_kernel_reads_table_strides_and_half():
    """sin laid out differently from cos (the kernel reads both through one set of strides, so
    the op must notice), fp16 activations (bf16 on the GPU below: the interpreter converts to
    bf16 by truncation, not rounding)."""
    q, k, wq, wk, cos, sin = _inputs(2, 9, 2, 32, dtype=torch.float16)
    sin = sin.transpose(1, 3).contiguous().transpose(1, 3)
    q_out, k_out = rms_norm_rotary_qk(q, k, wq, wk, cos, sin, 2, 1e-5)
    _assert_half_close(q_out, q, wq, cos, sin, 2, 1e-5)
    _assert_half_close(k_out, k, wk, cos, sin, 2, 1e-5)


def test_rotation_is_applied_per_token_and_pair():
    """A kernel that ignored the angles, or read the wrong token's, fails here: zero angles give
    the plain norm, and a single token's angle moves only that token."""
    q, k, wq, wk, cos, sin = _inputs(1, 6, 2, 16)
    zeros = torch.zeros_like(cos)
    plain, _ = rms_norm_rotary_qk(q, k, wq, wk, zeros.cos(), zeros.sin(), 2, 1e-6)
    norm = torch.nn.functional.rms_norm(q, (q.shape[-1],), wq, 1e-6).unflatten(-1, (2, -1))
    torch.testing.assert_close(plain, norm)
    one = zeros.clone()
    one[:, 3] = 0.7
    moved, _ = rms_norm_rotary_qk(q, k, wq, wk, one.cos(), one.sin(), 2, 1e-6)
    same = torch.ones(6, dtype=torch.bool, device=q.device)
    same[3] = False
    torch.testing.assert_close(moved[:, same], plain[:, same])
    assert (moved[:, 3] - plain[:, 3]).abs().max() > 0.1


def test_op_schema_and_fake():
    q, k, wq, wk, cos, sin = _inputs(1, 4, 2, 16)
    torch.library.opcheck(
        rms_norm_rotary_qk,
        (q.contiguous(), k.contiguous(), wq, wk, cos, sin, 2, 1e-6),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "k": a["k"][:, :-1]}, "one shape"),
        (lambda a: {**a, "heads": 5}, "heads must divide"),
        (lambda a: {**a, "q_weight": a["q_weight"][:-1]}, "q_weight must have shape"),
        (lambda a: {**a, "k_weight": a["k_weight"].double()}, "k_weight must have q's dtype"),
        (lambda a: {**a, "cos": a["cos"].double()}, "cos must be a float32 table"),
        (lambda a: {**a, "sin": a["sin"][:, :-1]}, "sin must be a float32 table"),
    ],
)
def test_bad_input(change, message):
    q, k, wq, wk, cos, sin = _inputs(1, 4, 2, 16)
    args = dict(q=q, k=k, q_weight=wq, k_weight=wk, cos=cos, sin=sin, heads=2, eps=1e-6)
    with pytest.raises(ValueError, match=message):
        rms_norm_rotary_qk(**change(args))


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 rounding as the GPU does it")
def test_cuda_bf16_at_wan_width():
    q, k, wq, wk, cos, sin = _inputs(1, 1000, 12, 128, dtype=torch.bfloat16)
    q_out, k_out = rms_norm_rotary_qk(q, k, wq, wk, cos, sin, 12, 1e-6)
    _assert_half_close(q_out, q, wq, cos, sin, 12, 1e-6)
    _assert_half_close(k_out, k, wk, cos, sin, 12, 1e-6)
