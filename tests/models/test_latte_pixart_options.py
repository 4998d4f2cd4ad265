"""The PixArt-α options of VideoDiTConfig (what diffusers' LatteTransformer3DModel needs): each
changes the output when toggled, and each equals what it claims against a written-out formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testing import PIXART, tiny_inputs, tiny_model

from slatte.models import VideoDiT, cat_contexts, load_model, save_model


def toggled(model: VideoDiT, seed: int = 7, **changes) -> VideoDiT:
    """A model with `changes` to the config, the weights it shares with `model`, and random
    values (seeded) for the parameters only it has."""
    other = VideoDiT(model.config.replace(**changes)).eval()
    shared = {k: v for k, v in model.state_dict().items() if k in other.state_dict()}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name not in shared:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    other.load_state_dict(shared, strict=False)
    return other


def test_cross_attn_norm_normalises_the_cross_attention_input():
    raw = tiny_model(text_dim=12, cross_attn_norm=False)
    normed = toggled(raw, cross_attn_norm=True)
    x, t, y, kw = tiny_inputs(raw.config)
    with torch.no_grad():
        for block in normed.blocks:  # an identity affine: only the normalisation differs
            if block.norm_cross is not None:
                block.norm_cross.weight.fill_(1.0)
                block.norm_cross.bias.zero_()
        h, ctx = raw.embed(x, t, y, **kw)
        got = raw.blocks[0](h, ctx)
        # Block 0 on LayerNorm(h) where the cross-attention reads h: the cross term must move.
        assert (got - normed.blocks[0](h, ctx)).abs().max() > 1e-2
        out, out_normed = raw(x, t, y, **kw), normed(x, t, y, **kw)
    assert (out - out_normed).abs().max() > 1e-2


def test_table_block_modulation_equals_adaln_with_the_table_folded_in():
    table = tiny_model(text_dim=12, block_modulation="table")
    adaln = toggled(table, block_modulation="adaln")
    x, t, y, kw = tiny_inputs(table.config)
    with torch.no_grad():
        out = table(x, t, y, **kw)
        shared = table.shared_modulation[1]
        for block in adaln.blocks:
            block.adaLN_modulation[1].weight.copy_(shared.weight)
            block.adaLN_modulation[1].bias.copy_(shared.bias)
        # Without the tables the output changes ...
        assert (adaln(x, t, y, **kw) - out).abs().max() > 1e-2
        for block, src in zip(adaln.blocks, table.blocks, strict=True):
            block.adaLN_modulation[1].bias.add_(src.scale_shift_table.flatten())
        # ... with them folded into the biases it is the same function.
        torch.testing.assert_close(adaln(x, t, y, **kw), out, atol=1e-5, rtol=1e-5)
    # One modulation linear in all, not one per block.
    assert not any(k.startswith("blocks.") and "adaLN" in k for k in table.state_dict())


def test_table_final_modulation_is_table_plus_c():
    model = tiny_model(final_modulation="table")
    x, t, y, _ = tiny_inputs(model.config)
    with torch.no_grad():
        h, ctx = model.embed(x, t, y)
        h = model.run_blocks(h, ctx)
        mod = model.final_layer.scale_shift_table[None] + ctx.c[:, None]  # (B, 2, D)
        shift, scale = mod.unbind(1)
        want = F.layer_norm(h, (32,), eps=1e-6) * (1 + scale[:, None, None]) + shift[:, None, None]
        want = want @ model.final_layer.linear.weight.T + model.final_layer.linear.bias
        torch.testing.assert_close(model.final_layer(h, ctx.c), want, atol=1e-5, rtol=1e-5)
        adaln = toggled(model, final_modulation="adaln")
        assert (adaln(x, t, y) - model(x, t, y)).abs().max() > 1e-2


def test_single_frame_temporal_embed_only_changes_one_frame_inputs():
    model = tiny_model(single_frame_temporal_embed=False)
    x, t, y, _ = tiny_inputs(model.config)
    image = x[:, :1]
    with torch.no_grad():
        video, single = model(x, t, y), model(image, t, y)
        model.config = model.config.replace(single_frame_temporal_embed=True)
        torch.testing.assert_close(model(x, t, y), video, rtol=0, atol=0)
        assert (model(image, t, y) - single).abs().max() > 1e-2
        # Off means exactly no temporal embedding for that frame.
        model.temp_embed.zero_()
        torch.testing.assert_close(model(image, t, y), single, rtol=0, atol=0)


def test_pixart_model_round_trips_and_starts_at_zero(tmp_path):
    model = tiny_model(text_dim=12, block_pattern="full", **PIXART)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y, **kw), model(x, t, y, **kw), rtol=0, atol=0)
        # Freshly initialised, every block is the identity and the output zero (adaLN-Zero).
        fresh = tiny_model(randomize=False, text_dim=12, **PIXART)
        h, ctx = fresh.embed(x, t, y, **kw)
        for block in fresh.blocks:
            torch.testing.assert_close(block(h, ctx), h, rtol=0, atol=0)
        assert torch.equal(fresh(x, t, y, **kw), torch.zeros(2, 3, 4, 8, 8))


def test_shared_modulation_travels_with_the_batch_through_a_fork():
    model = tiny_model(text_dim=12, **PIXART)
    x, t, y, kw = tiny_inputs(model.config, batch=3)
    rows = [torch.tensor([2]), torch.tensor([0, 1])]
    with torch.no_grad():
        h, ctx = model.embed(x, t, y, **kw)
        full = model.final(model.run_blocks(h, ctx), ctx)
        joined = cat_contexts([ctx.map_batch(lambda z, r=r: z[r]) for r in rows])
        h = torch.cat([h[r] for r in rows])
        out = model.final(model.run_blocks(h, joined), joined)
    torch.testing.assert_close(out, full[torch.cat(rows)], rtol=0, atol=0)
    plain = tiny_model(text_dim=12)
    with pytest.raises(ValueError, match="with and without a shared modulation"):
        cat_contexts([ctx, plain.embed(x, t, y, **kw)[1]])
