"""The models that ship with slatte: they load, sample the digit asked for, and `slatte sample`
uses the default one with its recommended options, which flags override."""

import argparse
import json

import pytest
import torch

from slatte.cli import SAMPLE_DEFAULTS, apply_sampling_defaults, main
from slatte.eval.classifier import digit_accuracy
from slatte.models import load_model
from slatte.pretrained import DEFAULT_MODEL, available, pretrained_dir, sampling_defaults
from slatte.sampling import SampleOptions, generate


def test_every_shipped_model_has_weights_card_and_sampling_options():
    assert DEFAULT_MODEL in available()
    for name in available():
        directory = pretrained_dir(name)
        assert (directory / "MODEL_CARD.md").is_file()
        assert (directory / "model.safetensors").stat().st_size <= 20 * 2**20
        # Every shipped model recommends its options; they are checked on reading.
        assert sampling_defaults(directory)
    with pytest.raises(ValueError, match=r"no shipped model named 'latte-xl'; shipped: \["):
        pretrained_dir("latte-xl")


def test_default_model_draws_the_requested_digits():
    # Few steps and no STG keep this at ~10 s on 2 cores; the digits are already readable.
    model = load_model(pretrained_dir())
    labels = (3, 7)
    opts = SampleOptions(
        num_samples=2, labels=labels, steps=10, sampler="ddim", cfg_scale=4.0, seed=0,
        progress=False,
    )  # fmt: skip
    videos, _ = generate(model, opts)
    assert videos.shape == (2, 16, 1, 32, 32)
    scores = digit_accuracy(videos, list(labels))
    assert scores.video_accuracy == 1.0
    assert scores.frame_accuracy >= 0.9, scores


def test_sample_without_checkpoint_uses_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "samples"
    argv = ["sample", "--num-samples", "1", "--steps", "2", "--formats", "png", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(out / "frames.png")]


def _args(**given) -> argparse.Namespace:
    unset = {"sampler": None, "steps": None, "cfg_scale": None, "guidance_rescale": None}
    unset |= {"stg_blocks": None, "stg_scale": None, "stg_strategy": None}
    return argparse.Namespace(**(unset | given))


RECOMMENDED_JSON = {
    "sampler": "ddim",
    "steps": 20,
    "cfg_scale": 4.0,
    "stg": [{"blocks": [0], "scale": 1.5, "strategy": "attention_skip"}],
}


@pytest.fixture
def recommended(tmp_path):
    (tmp_path / "sampling.json").write_text(json.dumps(RECOMMENDED_JSON))
    return sampling_defaults(tmp_path)


def test_sampling_json_fills_what_flags_leave_unset(recommended):
    args = _args(steps=7)
    apply_sampling_defaults(args, recommended)
    assert (args.sampler, args.steps, args.cfg_scale) == ("ddim", 7, 4.0)
    assert args.guidance_rescale == SAMPLE_DEFAULTS["guidance_rescale"]  # not in the file
    assert args.stg_blocks == [(0,)]
    assert (args.stg_scale, args.stg_strategy) == ([1.5], ["attention_skip"])

    replaced = _args(stg_blocks=[(2, 3)])
    apply_sampling_defaults(replaced, recommended)
    assert replaced.stg_blocks == [(2, 3)] and replaced.stg_scale is None

    switched_off = _args(stg_scale=[0.0])
    apply_sampling_defaults(switched_off, recommended)
    assert switched_off.stg_scale == [0.0] and switched_off.stg_strategy == ["attention_skip"]

    plain = _args()
    apply_sampling_defaults(plain, {})
    assert {k: getattr(plain, k) for k in SAMPLE_DEFAULTS} == SAMPLE_DEFAULTS
    assert plain.stg_blocks is None


@pytest.mark.parametrize(
    "content,match",
    [
        ({"steps": 10, "cfg": 3}, r"unknown key\(s\) \['cfg'\]"),
        ({"stg": [{"scale": 1.0}]}, "each 'stg' term needs 'blocks'"),
        ({"stg": {"blocks": [0]}}, "'stg' must be a list of terms"),
        ({"stg": [{"blocks": "0"}]}, "stg blocks must be one or more block indices"),
        ({"stg": [{"blocks": [0], "strategy": "skip"}]}, "stg strategy must be one of"),
        ({"stg": [{"blocks": [0], "scale": -1}]}, "stg scale must be >= 0, got -1"),
        ({"steps": "20"}, "steps must be an integer >= 1, got '20'"),
        ({"sampler": "euler"}, r"sampler must be one of \('ddpm', 'ddim'\), got 'euler'"),
        ({"cfg_scale": -1}, "cfg_scale must be >= 0, got -1"),
        ({"guidance_rescale": 2}, r"guidance_rescale must lie in \[0, 1\]"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_bad_sampling_json_names_the_file_and_the_value(tmp_path, content, match):
    (tmp_path / "sampling.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="sampling.json: " + match):
        sampling_defaults(tmp_path)


def test_a_model_without_sampling_json_recommends_nothing(tmp_path):
    assert sampling_defaults(tmp_path) == {}


def test_shipped_weights_are_bf16_and_load_into_fp32():
    from safetensors.torch import load_file

    stored = load_file(str(pretrained_dir() / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model = load_model(pretrained_dir())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
