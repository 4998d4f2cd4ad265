"""Latte → slatte VideoDiT: official checkpoints, checked against outputs of the official model
code (recorded once on a tiny random model: fixtures/latte_official_tiny.safetensors), and
diffusers' LatteTransformer3DModel, checked against diffusers itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slatte.integrations.latte_convert import (
    convert_diffusers_latte,
    convert_official_latte,
    load_official_checkpoint,
    official_config,
)

FIXTURE = Path(__file__).parent / "fixtures" / "latte_official_tiny.safetensors"


@pytest.fixture(scope="module")
def fixture():
    data = load_file(str(FIXTURE))
    state = {k.removeprefix("model."): v for k, v in data.items() if k.startswith("model.")}
    return state, data


def test_converted_model_reproduces_the_official_outputs(fixture, tmp_path):
    state, data = fixture
    path = tmp_path / "latte.pt"
    torch.save({"ema": {f"module.{k}": v for k, v in state.items()}, "opt": {}}, path)
    model = convert_official_latte(load_official_checkpoint(path), num_heads=2)
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_classes, cfg.num_frames) == (4, 16, 3, 3)
    assert (cfg.input_size, cfg.patch_size, cfg.learn_sigma) == (8, 2, True)
    with torch.no_grad():
        out = model(data["input.x"], data["input.t"], data["input.y"])
    # Outputs are O(3) (weights ~N(0, 0.3)); fp32 summation order differs between the two codes.
    torch.testing.assert_close(out, data["output"], atol=1e-4, rtol=1e-4)
    assert (out - data["output"]).abs().max() < 1e-3 * data["output"].abs().mean()


def test_conversion_rejects_what_it_cannot_convert(fixture, tmp_path):
    state, _ = fixture
    with pytest.raises(ValueError, match="pass num_heads"):
        official_config(state)
    no_labels = {k: v for k, v in state.items() if not k.startswith("y_embedder")}
    with pytest.raises(ValueError, match="not class-conditional"):
        official_config(no_labels, num_heads=2)
    shifted = {**state, "pos_embed": state["pos_embed"] + 0.1}
    with pytest.raises(ValueError, match="pos_embed of the checkpoint differs"):
        convert_official_latte(shifted, num_heads=2)
    with pytest.raises(ValueError, match="missing"):
        convert_official_latte(
            {k: v for k, v in state.items() if "blocks.3.mlp" not in k}, num_heads=2
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_official_checkpoint(tmp_path / "nope.pt")


def _diffusers_latte(**overrides):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    options = dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=32, caption_channels=16,
        video_length=3, norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, activation_fn="gelu-approximate", attention_bias=True,
    )  # fmt: skip
    model = diffusers.LatteTransformer3DModel(**(options | overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised parts too, so any mismatch shows
            p.normal_(std=0.2)
    return model


def test_diffusers_latte_converts_to_the_same_function():
    source = _diffusers_latte()
    model = convert_diffusers_latte(source)
    assert [b.kind for b in model.blocks] == ["spatial", "temporal", "spatial", "temporal"]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)  # diffusers layout (B, C, F, H, W)
    t, text = torch.tensor([10, 700]), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        expected = source(x, t, text).sample
        out = model(x.permute(0, 2, 1, 3, 4), t, text=text).permute(0, 2, 1, 3, 4)
    assert expected.abs().mean() > 0.5
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_diffusers_latte_variants_without_a_slatte_equivalent_are_refused():
    with pytest.raises(ValueError, match="activation_fn='geglu'"):
        convert_diffusers_latte(_diffusers_latte(activation_fn="geglu"))
    with pytest.raises(ValueError, match="needs a LatteTransformer3DModel"):
        convert_diffusers_latte(torch.nn.Linear(2, 2))
