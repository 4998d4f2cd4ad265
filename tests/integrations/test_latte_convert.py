"""Latte → slatte VideoDiT: official checkpoints, checked against outputs of the official model
code (recorded once on a tiny random model: fixtures/latte_official_tiny.safetensors), and
diffusers' LatteTransformer3DModel (saved by the test, converted in Python and through
`slatte convert latte-diffusers`), checked against diffusers itself."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slatte.integrations.cli import add_convert_parser
from slatte.integrations.latte_convert import (
    convert_diffusers_latte,
    convert_official_latte,
    load_official_checkpoint,
    official_config,
)
from slatte.models import load_model, save_model

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
    pooled_text = {**state, "text_embedding_projection.1.weight": torch.zeros(16, 77 * 768)}
    with pytest.raises(ValueError, match="extras=78 of models/latte.py"):
        official_config(pooled_text, num_heads=2)
    t2v = {**state, "adaln_single.linear.weight": torch.zeros(96, 16)}
    with pytest.raises(ValueError, match="Latte-T2V state dict.*pass the directory"):
        official_config(t2v, num_heads=2)
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


def _both_outputs(source, model, frames: int):
    """diffusers' and the converted model's outputs on the same inputs, in diffusers' layout."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, frames, 8, 8, generator=g)  # diffusers layout (B, C, F, H, W)
    t, text = torch.tensor([10, 700]), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        expected = source(x, t, text).sample
        out = model(x.permute(0, 2, 1, 3, 4), t, text=text).permute(0, 2, 1, 3, 4)
    assert expected.abs().mean() > 0.5
    return out, expected


@pytest.mark.parametrize("attention_bias", [True, False])
def test_diffusers_latte_converts_to_the_same_function(attention_bias):
    source = _diffusers_latte(attention_bias=attention_bias)
    model = convert_diffusers_latte(source)
    assert [b.kind for b in model.blocks] == ["spatial", "temporal", "spatial", "temporal"]
    # A single frame is an image to diffusers' Latte: no temporal embedding; so for slatte.
    for frames in (3, 1):
        out, expected = _both_outputs(source, model, frames)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_converted_diffusers_latte_is_a_plain_model_that_survives_save_and_load(tmp_path):
    model = convert_diffusers_latte(_diffusers_latte())
    assert (model.config.block_modulation, model.config.final_modulation) == ("table", "table")
    assert not model.config.cross_attn_norm and not model.config.single_frame_temporal_embed
    assert all(type(m).__module__.startswith(("slatte.", "torch.")) for m in model.modules())
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.config == model.config
    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text=text), model(x, t, text=text), rtol=0, atol=0)


def _convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slatte")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_converts_a_local_diffusers_latte_pipeline_directory(tmp_path, capsys):
    source = _diffusers_latte()
    source.save_pretrained(tmp_path / "pipe" / "transformer")
    for given, out in ((tmp_path / "pipe", "a"), (tmp_path / "pipe" / "transformer", "b")):
        args = _convert_parser().parse_args(
            ["convert", "latte-diffusers", str(given), str(tmp_path / out)]
        )
        assert args.func(args) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["config"]["depth"] == 4 and printed["config"]["text_dim"] == 16
        converted, expected = _both_outputs(source, load_model(tmp_path / out), 3)
        torch.testing.assert_close(converted, expected, atol=2e-5, rtol=2e-5)


def test_cli_latte_diffusers_bad_input_is_a_clear_error(tmp_path):
    def convert(given, *extra):
        args = _convert_parser().parse_args(
            ["convert", "latte-diffusers", str(given), str(tmp_path / "out"), *extra]
        )
        return args.func(args)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert(tmp_path / "empty")
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "config.json").write_text('{"_class_name": "WanTransformer3DModel"}')
    with pytest.raises(ValueError, match="names class 'WanTransformer3DModel'"):
        convert(tmp_path / "wan")
    with pytest.raises(ValueError, match="--num-heads applies to latte-official only"):
        convert(tmp_path / "wan", "--num-heads", "2")
    assert not (tmp_path / "out").exists()


def test_diffusers_latte_variants_without_a_slatte_equivalent_are_refused():
    with pytest.raises(ValueError, match="activation_fn='geglu'"):
        convert_diffusers_latte(_diffusers_latte(activation_fn="geglu"))
    with pytest.raises(ValueError, match=r"out_channels=12 \(needs in_channels=4"):
        convert_diffusers_latte(_diffusers_latte(out_channels=12))
    with pytest.raises(ValueError, match="pos_embed of this LatteTransformer3DModel differs"):
        convert_diffusers_latte(_diffusers_latte(sample_size=128))
    with pytest.raises(ValueError, match="needs a LatteTransformer3DModel"):
        convert_diffusers_latte(torch.nn.Linear(2, 2))
