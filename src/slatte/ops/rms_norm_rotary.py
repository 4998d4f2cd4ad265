"""Wan2.1's query/key preparation, RMS norm over all heads then the rotary embedding, as one pass.

A Wan2.1 self-attention normalises q and k (B, N, H·D) with an RMSNorm over the whole H·D row,
splits the heads and rotates each feature pair (2i, 2i+1) by a per-token angle. Done as separate
PyTorch or inductor kernels that is about 0.75 ms per layer at Wan2.1-1.3B's 32,760 tokens on an
H100, some five times the cost of reading q and k once and writing them once
(benchmarks/NOTES.md, session 7). `rms_norm_rotary_qk` does exactly that: one program per few
tokens loads each row of q and of k, normalises, scales, rounds to the activations' dtype (where
the model's RMSNorm module hands its output to the rotation) and rotates, reading each token's
angles once for both. It is a `torch.library` custom op, so torch.compile keeps it one kernel;
inference only (no autograd formula: callers fall back to the modules when gradients are needed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_interpreter import triton_interpreting


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding: rotate the feature pairs (2i, 2i+1) of x (B, N, H, D) by the
    angles of `cos`, `sin` (1, N, 1, D) fp32 tables, which hold each pair's angle twice
    (repeat-interleaved; one of the two columns per pair is read). Products in fp32, result in
    x's dtype."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # each (B, N, H, D/2)
    c, s = cos[..., 0::2], sin[..., 0::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


def _reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    eps: float,
) -> torch.Tensor:
    normed = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return rotate_pairs(normed.unflatten(-1, (heads, -1)), cos, sin)


@triton.jit
def _norm_rotate_rows(
    X, W, OUT, rows, b, n, ok, c, s, stride_xb, stride_xn, eps,
    H: tl.constexpr, H_P2: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """One tensor's BLOCK_T rows (tokens b, n): RMS norm over H·D, weight, round, rotate."""
    h = tl.arange(0, H_P2)
    d = tl.arange(0, D)
    mask = ok[:, None, None] & (h < H)[None, :, None]
    feature = h[None, :, None] * D + d[None, None, :]
    x_rows = (b * stride_xb + n * stride_xn)[:, None, None]
    x = tl.load(X + x_rows + feature, mask=mask, other=0.0).to(tl.float32)
    mean_square = tl.sum(tl.sum(x * x, axis=2), axis=1) / (H * D)
    w = tl.load(W + feature, mask=(h < H)[None, :, None], other=0.0).to(tl.float32)
    # The module's RMSNorm output is in the activations' dtype before the rotation reads it.
    y = (x * tl.rsqrt(mean_square + eps)[:, None, None] * w).to(OUT.dtype.element_ty)
    even, odd = tl.split(tl.reshape(y.to(tl.float32), (BLOCK_T, H_P2, D // 2, 2)))
    cos, sin = c[:, None, :], s[:, None, :]
    rotated = tl.join(even * cos - odd * sin, even * sin + odd * cos)
    out = tl.reshape(rotated, (BLOCK_T, H_P2, D)).to(OUT.dtype.element_ty)
    tl.store(OUT + (rows * (H * D))[:, None, None] + feature, out, mask=mask)


@triton.jit(do_not_specialize=["T", "N"])
def rms_norm_rotary_kernel(
    Q, K, WQ, WK, COS, SIN, QO, KO, T, N,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_cn, stride_cd, eps,
    H: tl.constexpr, H_P2: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """q and k rows (B·N of them, H·D features, last dim contiguous) → (B, N, H, D) outputs,
    contiguous. COS / SIN: fp32 (N, D) tables through strides, each angle at the even column."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = rows < T
    b, n = rows // N, rows % N
    pair = tl.arange(0, D // 2)
    angle = n[:, None] * stride_cn + (2 * pair)[None, :] * stride_cd
    c = tl.load(COS + angle, mask=ok[:, None], other=0.0)
    s = tl.load(SIN + angle, mask=ok[:, None], other=0.0)
    _norm_rotate_rows(
        Q, WQ, QO, rows, b, n, ok, c, s, stride_qb, stride_qn, eps, H, H_P2, D, BLOCK_T
    )
    _norm_rotate_rows(
        K, WK, KO, rows, b, n, ok, c, s, stride_kb, stride_kn, eps, H, H_P2, D, BLOCK_T
    )


def _check(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, heads: int,
) -> None:  # fmt: skip
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(
            f"q and k must be (B, N, H*D) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    b, n, c = q.shape
    if heads < 1 or c % heads:
        raise ValueError(f"heads must divide the feature size {c}, got heads={heads}")
    d = c // heads
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if tuple(w.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},), got {tuple(w.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (1, n, 1, d) or t.dtype != torch.float32:
            raise ValueError(
                f"{name} must be a float32 table of shape (1, {n}, 1, {d}), got "
                f"{tuple(t.shape)} {t.dtype}"
            )
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {w.dtype}")


@torch.library.custom_op("slatte::rms_norm_rotary_qk", mutates_args=())
def rms_norm_rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, N, H·D) → each RMS-normalised over its H·D row (`eps`, weight (H·D,)), split into
    `heads` heads and rotated pairwise by Wan's `cos`, `sin` tables (1, N, 1, D):
    (B, N, H, D) each, contiguous, in q's dtype. On CUDA (or under Triton's interpreter) one
    fused kernel; elsewhere the same steps in PyTorch."""
    _check(q, k, q_weight, k_weight, cos, sin, heads)
    d = q.shape[-1] // heads
    triton_ok = d >= 2 and d & (d - 1) == 0 and q.stride(-1) == 1 and k.stride(-1) == 1
    if not (triton_ok and (q.is_cuda or triton_interpreting())):
        return _reference(q, q_weight, cos, sin, heads, eps), _reference(
            k, k_weight, cos, sin, heads, eps
        )
    if sin.stride() != cos.stride():  # the kernel reads both through one set of strides
        cos, sin = cos.contiguous(), sin.contiguous()
    b, n, _ = q.shape
    q_out = q.new_empty(b, n, heads, d)
    k_out = torch.empty_like(q_out)
    block_t = 2 if heads * d >= 2048 else 4  # ~4K features per tensor per program
    grid = (triton.cdiv(b * n, block_t),)
    rms_norm_rotary_kernel[grid](
        q, k, q_weight, k_weight, cos, sin, q_out, k_out, b * n, n,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(1), cos.stride(3), eps,
        H=heads, H_P2=triton.next_power_of_2(heads), D=d, BLOCK_T=block_t, num_warps=4,
    )  # fmt: skip
    return q_out, k_out


@rms_norm_rotary_qk.register_fake
def _(q, k, q_weight, k_weight, cos, sin, heads, eps):
    b, n, c = q.shape
    out = q.new_empty(b, n, heads, c // heads)
    return out, torch.empty_like(out)
