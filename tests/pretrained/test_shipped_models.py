"""The models that ship with slatte: they load, sample the digit asked for, and `slatte sample`
uses the default one (or one named by --checkpoint) with its recommended options, which flags
override."""

import argparse
import json

import pytest
import torch

import slatte.ops.sla.interface as sla_interface
from slatte.cli import SAMPLE_DEFAULTS, main, resolve_model_dir, sampling_settings
from slatte.eval.classifier import digit_accuracy
from slatte.models import load_model
from slatte.nn.sla import SparseLinearAttention
from slatte.ops.sla.config import block_counts
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
    unset |= {"stg_blocks": None, "stg_scale": None, "stg_strategy": None, "stg_window": None}
    unset |= {"stg_adaptive": None}
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
    args = sampling_settings(_args(steps=7), recommended)
    assert (args["sampler"], args["steps"], args["cfg_scale"]) == ("ddim", 7, 4.0)
    assert args["guidance_rescale"] == SAMPLE_DEFAULTS["guidance_rescale"]  # not in the file
    assert args["stg_blocks"] == [(0,)]
    assert (args["stg_scale"], args["stg_strategy"]) == ([1.5], ["attention_skip"])

    replaced = sampling_settings(_args(stg_blocks=[(2, 3)]), recommended)
    assert replaced["stg_blocks"] == [(2, 3)] and replaced["stg_scale"] is None

    switched_off = sampling_settings(_args(stg_scale=[0.0]), recommended)
    assert switched_off["stg_scale"] == [0.0]
    assert switched_off["stg_strategy"] == ["attention_skip"]

    plain_args = _args()
    plain = sampling_settings(plain_args, {})
    assert {k: plain[k] for k in SAMPLE_DEFAULTS} == SAMPLE_DEFAULTS
    assert plain["stg_blocks"] is None
    assert plain_args.sampler is None  # the flags themselves stay as given


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


@pytest.mark.parametrize("name", available())
def test_shipped_weights_are_bf16_and_load_into_fp32(name):
    from safetensors.torch import load_file

    stored = load_file(str(pretrained_dir(name) / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model = load_model(pretrained_dir(name))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


SLA_MODEL = "latte-digits-full-sla"


def _sla_layers(model) -> list[SparseLinearAttention]:
    return [m for m in model.modules() if isinstance(m, SparseLinearAttention)]


def test_sla_model_is_full_attention_at_95_percent_sparsity_with_trained_projections():
    model = load_model(pretrained_dir(SLA_MODEL))
    cfg = model.config
    assert (cfg.block_pattern, cfg.attention_backend) == ("full", "sla")
    layers = _sla_layers(model)
    assert len(layers) == cfg.depth
    tokens = cfg.num_frames * (cfg.input_size // cfg.patch_size) ** 2
    for layer in layers:
        sla = layer.config
        assert (layer.backend, sla.critical, sla.negligible) == ("sla", 0.05, 0.10)
        assert (sla.projection, sla.linear_scope) == ("learned", "marginal")
        # What the card states: of 64 key blocks of 64 tokens, 3 exact, 6 skipped, 55 linear.
        assert tokens // sla.block_k == 64
        assert block_counts(sla.critical, sla.negligible, tokens // sla.block_k) == (3, 6)
        # A fine-tuned projection: a zero one (an SLA layer just switched on) would mean the
        # exported model never learned its linear branch.
        assert layer.proj_l.weight.abs().mean() > 1e-3


def test_checkpoint_may_name_a_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(SLA_MODEL) == pretrained_dir(SLA_MODEL)
    # An existing path wins over a shipped name.
    local = tmp_path / SLA_MODEL
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert resolve_model_dir(SLA_MODEL) == local.relative_to(tmp_path)


def test_unknown_checkpoint_name_lists_the_shipped_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--checkpoint", "latte-xl", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "'latte-xl' does not exist and is no shipped model name" in err
    assert f"shipped: {list(available())}" in err


def test_sla_model_samples_through_the_cpu_path_and_uses_its_linear_branch(monkeypatch):
    calls = []

    def counted_blocked(*args, **kwargs):
        calls.append(args[0].shape)
        return blocked(*args, **kwargs)

    blocked = sla_interface.sla_blocked  # what SLA runs on off CUDA
    monkeypatch.setattr(sla_interface, "sla_blocked", counted_blocked)
    model = load_model(pretrained_dir(SLA_MODEL))
    opts = SampleOptions(
        num_samples=1, labels=(5,), steps=2, sampler="ddim", seed=0, progress=False
    )  # fmt: skip
    videos, _ = generate(model, opts)
    # Two steps of one unguided video: each of the 4 blocks attends over 4,096 tokens per step.
    assert calls == [torch.Size([1, 4, 4096, 32])] * (2 * model.config.depth)

    with torch.no_grad():
        for layer in _sla_layers(model):
            layer.proj_l.weight.zero_()
            layer.proj_l.bias.zero_()
    sparse_only, _ = generate(model, opts)
    # The 55 linear blocks per query block carry real attention mass: without their projection
    # the sample moves visibly, not by rounding.
    assert (videos - sparse_only).abs().mean() > 0.05  # 0.135 measured
