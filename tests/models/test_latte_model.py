"""The VideoDiT: shapes, determinism, the three-step forward, conditioning, training aids."""

from __future__ import annotations

import pytest
import torch
from model_testing import PIXART, tiny_config, tiny_inputs, tiny_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from slatte.guidance.strategies import STRATEGIES
from slatte.models import VideoDiT, cat_contexts
from slatte.nn.embeddings import sincos_1d


@pytest.mark.parametrize("pattern", ["alternating", "full"])
@pytest.mark.parametrize("text_dim", [None, 12])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape(pattern, text_dim, learn_sigma):
    model = tiny_model(block_pattern=pattern, text_dim=text_dim, learn_sigma=learn_sigma)
    x, t, y, kw = tiny_inputs(model.config, batch=3)
    out = model(x, t, y, **kw)
    c = model.config.in_channels
    assert model.config.out_channels == (2 * c if learn_sigma else c)
    assert out.shape == (3, 3, model.config.out_channels, 8, 8)
    h, ctx = model.embed(x, t, y, **kw)
    assert h.shape == (3, 3, 16, 32) and ctx.c.shape == (3, 32)
    assert [b.kind for b in model.blocks] == (
        ["spatial", "temporal"] if pattern == "alternating" else ["full", "full"]
    )
    # Fewer frames than the model was built for are accepted.
    assert model(x[:, :2], t, y, **kw).shape[1] == 2


def test_fresh_model_is_deterministic_and_starts_at_zero():
    a, b = tiny_model(seed=3, randomize=False), tiny_model(seed=3, randomize=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    x, t, y, _ = tiny_inputs(a.config)
    # adaLN-Zero: the final layer is zero, so a fresh model predicts exactly zero.
    assert torch.equal(a(x, t, y), torch.zeros(2, 3, 4, 8, 8))
    model = tiny_model(seed=3)
    torch.testing.assert_close(model(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_learned_sigma_channel_split():
    """Output channel k of the (p, q, c)-ordered final linear lands in channel k, every pixel."""
    model = tiny_model(learn_sigma=True)
    c_out, p = model.config.out_channels, model.config.patch_size
    with torch.no_grad():
        model.final_layer.linear.weight.zero_()
        # bias[(pi·p + qi)·C_out + k] = 10·k + (pi·p + qi): channel k, sub-pixel (pi, qi)
        pos = torch.arange(p * p).repeat_interleave(c_out)
        chan = torch.arange(c_out).repeat(p * p)
        model.final_layer.linear.bias.copy_(10.0 * chan + pos)
    x, t, y, _ = tiny_inputs(model.config)
    out = model(x, t, y)  # (B, F, C_out, H, W)
    rows = torch.arange(8) % p
    cols = torch.arange(8) % p
    for k in range(c_out):
        want = 10.0 * k + rows[:, None] * p + cols[None, :]
        assert torch.equal(out[:, :, k], want.expand_as(out[:, :, k])), k
    eps, var = out.split(model.config.in_channels, dim=2)
    assert eps.shape == var.shape == (2, 3, 2, 8, 8)


@pytest.mark.parametrize("pattern", ["alternating", "full"])
def test_run_blocks_split_anywhere_equals_full_run(pattern):
    model = tiny_model(block_pattern=pattern, depth=4, text_dim=12)
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        h, ctx = model.embed(x, t, y, **kw)
        full = model.run_blocks(h, ctx)
        for split in range(5):
            parts = model.run_blocks(model.run_blocks(h, ctx, 0, split), ctx, split)
            torch.testing.assert_close(parts, full, rtol=0, atol=0)


@pytest.mark.parametrize("pattern,index", [("alternating", 1), ("full", 0)])
def test_temporal_embedding_enters_once_before_first_temporal_block(pattern, index):
    model = tiny_model(block_pattern=pattern, depth=4)
    assert model.temporal_embed_index() == index
    x, t, y, _ = tiny_inputs(model.config)
    skip_all = dict.fromkeys(range(4), STRATEGIES["transformer_block"])
    with torch.no_grad():
        h, ctx = model.embed(x, t, y)
        out = model.run_blocks(h, ctx, perturbations=skip_all)
        table = sincos_1d(32, torch.arange(3))  # (F, D)
        torch.testing.assert_close(out, h + table[:, None])
        # Before it (spatial blocks only) frames are independent: permuting them commutes.
        if index > 0:
            perm = torch.tensor([2, 0, 1])
            a = model.run_blocks(h, ctx, 0, index)[:, perm]
            b = model.run_blocks(h[:, perm], ctx, 0, index)
            torch.testing.assert_close(a, b)


def test_fork_with_map_batch_and_cat_contexts_equals_separate_runs():
    model = tiny_model(text_dim=12, depth=4)
    x, t, y, kw = tiny_inputs(model.config, batch=3)
    with torch.no_grad():
        skip = {2: STRATEGIES["attention_skip"]}
        full = model(x, t, y, **kw, perturbations=skip)
        clean = model(x, t, y, **kw)
        h, ctx = model.embed(x, t, y, **kw)
        h = model.run_blocks(h, ctx, 0, 2)
        rows = torch.tensor([2, 0])
        branch_ctx = cat_contexts([ctx, ctx.map_batch(lambda z: z[rows])])
        branch_h = torch.cat([h, h[rows]])
        out = model.run_blocks(branch_h, branch_ctx, 2, perturbations=skip)
        # Only the forked rows get the perturbation when split by hand:
        out_clean = model.final(model.run_blocks(h, ctx, 2), ctx)
        out_pert = model.final(out[3:], branch_ctx.map_batch(lambda z: z[3:]))
    torch.testing.assert_close(out_clean, clean, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_pert, full[rows], atol=2e-5, rtol=1e-4)


def test_cat_contexts_pads_text_without_changing_outputs():
    model = tiny_model(text_dim=12)
    x, t, y, kw = tiny_inputs(model.config, batch=2, text_len=5)
    short = {"text": kw["text"][:, :3], "text_mask": kw["text_mask"][:, :3]}
    with torch.no_grad():
        h1, ctx1 = model.embed(x, t, y, **kw)
        h2, ctx2 = model.embed(x, t, y, **short)
        ctx = cat_contexts([ctx1, ctx2])
        assert ctx.text.shape[1] == 5 and not ctx.text_mask[2:, 3:].any()
        out = model.final(model.run_blocks(torch.cat([h1, h2]), ctx), ctx)
        torch.testing.assert_close(out[:2], model(x, t, y, **kw), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out[2:], model(x, t, y, **short), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="with and without text"):
        cat_contexts([ctx1, tiny_model().embed(x, t, y)[1]])


def test_text_mask_hides_padding_and_no_text_adds_nothing():
    model = tiny_model(text_dim=12)
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        out = model(x, t, y, **kw)
        text = kw["text"].clone()
        text[0, 3:] = 100.0  # masked-out tokens of row 0
        torch.testing.assert_close(model(x, t, y, text=text, text_mask=kw["text_mask"]), out)
        other = kw["text"].clone()
        other[0, 0] = 3.0  # a real token changes the output
        assert not torch.allclose(model(x, t, y, text=other, text_mask=kw["text_mask"]), out)
        no_text = model(x, t, y)
        all_masked = model(x, t, y, text=kw["text"], text_mask=torch.zeros(2, 5, dtype=torch.bool))
        torch.testing.assert_close(no_text, all_masked, rtol=0, atol=0)
        assert no_text.isfinite().all()
        for block in model.blocks:
            if block.cross_attn is not None:
                block.cross_attn.proj.bias.zero_()
                block.cross_attn.proj.weight.zero_()
        text_free = tiny_model(text_dim=None)
        text_free.load_state_dict(model.state_dict(), strict=False)
        # ... zero cross-attention output equals a model built without text.
        torch.testing.assert_close(model(x, t, y, **kw), text_free(x, t, y), atol=1e-6, rtol=1e-6)


def test_class_dropout_and_null_class():
    model = tiny_model(class_dropout_prob=0.5)
    x, t, y, _ = tiny_inputs(model.config, batch=64)
    x, t = x[:1].expand(64, -1, -1, -1, -1), t[:1].expand(64)
    y = torch.full((64,), 3)
    null = torch.full((64,), model.config.num_classes)
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, null)
        torch.testing.assert_close(model(x, t), uncond)  # y=None means the null class
        model.train()
        torch.manual_seed(0)
        out = model(x, t, y)
        is_null = (out - uncond).flatten(1).abs().amax(1) < 1e-5
        is_cond = (out - cond).flatten(1).abs().amax(1) < 1e-5
        assert (is_null ^ is_cond).all()  # each row is exactly one of the two
        assert 16 <= int(is_null.sum()) <= 48  # ~ p = 0.5 of 64 rows
        model.eval()
        torch.testing.assert_close(model(x, t, y), cond, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(text_dim=12, depth=2)
    model.train()
    x, t, y, kw = tiny_inputs(model.config)

    def grads():
        torch.manual_seed(1)  # the same label dropout in both runs
        model.zero_grad()
        model(x, t, y, **kw).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing(True)
    assert model.gradient_checkpointing
    checkpointed = grads()
    for name, g in plain.items():
        assert g.abs().sum() > 0 or "embedding_table" in name, name
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_model_keeps_fp32_norms_and_timestep_embedding():
    model = tiny_model()
    x, t, y, _ = tiny_inputs(model.config)
    with torch.no_grad():
        ref = model(x, t, y)
        out = model.to(torch.bfloat16)(x, t, y)  # fp32 input into a bf16 model
        assert out.dtype == torch.bfloat16
        assert model.t_embedder(t).dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=0.1 * ref.abs().max().item(), rtol=0.05)


@pytest.mark.parametrize(
    "pattern,text_dim,options",
    [
        ("alternating", None, {}),
        ("alternating", 12, {}),
        ("full", None, {}),
        ("full", 12, {}),
        ("alternating", 12, PIXART),
    ],
)
def test_flops_estimate_matches_a_flop_counter(pattern, text_dim, options):
    model = tiny_model(text_dim=text_dim, block_pattern=pattern, **options)
    x, t, y, kw = tiny_inputs(model.config, batch=1, text_len=5)
    counter = FlopCounterMode(display=False)
    # The math backend runs attention as counted matmuls (the fused CPU kernel is not counted).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, t, y, **kw)
    assert model.flops_per_sample(text_length=5) == counter.get_total_flops()


def test_num_parameters():
    model = tiny_model(randomize=False)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.blocks[0].mlp.requires_grad_(False)
    frozen = sum(p.numel() for p in model.blocks[0].mlp.parameters())
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - frozen


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": torch.zeros(2, 3, 2, 8, 10)}, r"x must be \(B, F, 2, 8, 8\)"),
        ({"x": torch.zeros(2, 4, 2, 8, 8)}, "1 to 3 frames, got 4"),
        ({"y": torch.tensor([0, 6])}, r"lie in \[0, 5\]"),
        ({"y": torch.tensor([0.0, 1.0])}, "integer labels"),
        ({"t": torch.zeros(3)}, "t must be"),
        ({"text": torch.zeros(2, 4, 12)}, "no text conditioning"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, match):
    model = tiny_model()
    x, t, y, _ = tiny_inputs(model.config)
    args = {"x": x, "t": t, "y": y, **kwargs}
    text = args.pop("text", None)
    with pytest.raises(ValueError, match=match):
        model(args["x"], args["t"], args["y"], text=text)


def test_unconditional_model_rejects_labels():
    model = VideoDiT(tiny_config(num_classes=0))
    assert model.y_embedder is None
    x, t, _, _ = tiny_inputs(model.config)
    assert model(x, t).shape == (2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))


def test_torch_compile_fullgraph_matches_eager():
    """Dynamo captures forward and backward in one graph each (no graph break). The aot_eager
    backend checks exactly that without Inductor's C++ build, which takes ~40 s on 2 cores."""
    model = tiny_model(text_dim=12)
    x, t, y, kw = tiny_inputs(model.config)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        values = {1: STRATEGIES["attention_values"]}
        out = compiled(x, t, y, **kw, perturbations=values)
        ref = model(x, t, y, **kw, perturbations=values)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    model.enable_gradient_checkpointing(True)
    compiled(x, t, y, **kw).square().mean().backward()
    grad = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model(x, t, y, **kw).square().mean().backward()
    torch.testing.assert_close(grad, model.blocks[0].attn.qkv.weight.grad, atol=1e-5, rtol=1e-4)
