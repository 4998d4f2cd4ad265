"""Adaptive STG scale: the weight keeps the STG term at a ratio to the CFG term per sample and
step, capped by the term's scale; flags and sampling.json carry it."""

import argparse
import json

import pytest
import torch
from test_guided_model_fn import TOL, _inputs, _model  # the tiny random Latte made there

from slatte.cli import sampling_settings
from slatte.guidance import CFG, STG, guided_model_fn
from slatte.guidance.adaptive import adaptive_weights
from slatte.guidance.cli_args import (
    add_guidance_arguments,
    guidance_from_args,
    guidance_from_options,
)
from slatte.pretrained import sampling_defaults


@pytest.fixture(scope="module")
def model():
    return _model("alternating", depth=4)


def _norms(tensor):
    return tensor.flatten(1).norm(dim=1)


def test_weights_keep_the_ratio_follow_the_schedule_and_stop_at_the_cap():
    gen = torch.Generator().manual_seed(0)
    cfg_term = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    stg_diff = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64) * torch.tensor(
        [1.0, 0.1, 10.0], dtype=torch.float64
    ).view(3, 1, 1)
    progress = torch.tensor([0.0, 0.5, 1.0])
    w = adaptive_weights(cfg_term, stg_diff, ratio=0.5, cap=100.0, progress=progress)
    torch.testing.assert_close(_norms(w.view(3, 1, 1) * stg_diff), 0.5 * _norms(cfg_term))
    decay = adaptive_weights(
        cfg_term, stg_diff, ratio=0.5, cap=100.0, progress=progress, schedule="decay"
    )
    torch.testing.assert_close(decay, w * torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    rise = adaptive_weights(
        cfg_term, stg_diff, ratio=0.5, cap=100.0, progress=progress, schedule="rise"
    )
    torch.testing.assert_close(rise, w * progress.double())
    capped = adaptive_weights(cfg_term, stg_diff, ratio=0.5, cap=0.2, progress=progress)
    torch.testing.assert_close(capped, w.clamp(max=0.2))
    # A branch that equals the conditional one gets the cap, not an inf or nan.
    zero = adaptive_weights(
        cfg_term, torch.zeros_like(stg_diff), ratio=0.5, cap=3.0, progress=progress
    )
    assert zero.tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("fork", [True, False])
def test_guided_stg_term_has_the_target_ratio_per_row(model, fork):
    x, t, y = _inputs(model)  # rows differ in x, t and y
    term = STG(50.0, (1,), "attention_values", adaptive=0.3)  # a cap no row reaches
    with torch.no_grad():
        e_c = model(x, t, y)[:, :, :2]
        cfg_only = guided_model_fn(model, y=y, cfg_scale=3.0, fork=fork)(x, t)[:, :, :2]
        guided = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[term], fork=fork)(x, t)[:, :, :2]
        fixed = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[STG(1.0, (1,))])(x, t)[:, :, :2]
    # cfg_only = e_u + 3 (e_c - e_u) = e_c + 2 (e_c - e_u), so the CFG term 3 (e_c - e_u) is:
    stg_term, cfg_term = guided - cfg_only, 1.5 * (cfg_only - e_c)
    torch.testing.assert_close(_norms(stg_term), 0.3 * _norms(cfg_term), **TOL)
    assert (guided - fixed).abs().amax() > 1e-3


def test_cap_and_window(model):
    x, t, y = _inputs(model)  # t = 999, 640, 20: progress 0, 0.36, 0.98
    with torch.no_grad():
        capped = STG(1e-3, (2,), adaptive=100.0)  # every row at the cap: the fixed scale 1e-3
        out = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[capped])(x, t)
        fixed = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[STG(1e-3, (2,))])(x, t)
        torch.testing.assert_close(out, fixed, **TOL)
        cfg = CFG(3.0, start=0.0, stop=0.5)
        windowed = STG(50.0, (2,), adaptive=0.3, start=0.0, stop=0.5)  # rows 0 and 1
        e_c = model(x, t, y)[:, :, :2]
        cfg_only = guided_model_fn(model, y=y, cfg_scale=cfg)(x, t)[:, :, :2]
        guided = guided_model_fn(model, y=y, cfg_scale=cfg, stg=[windowed])(x, t)[:, :, :2]
    ratio = _norms(guided - cfg_only) / _norms(1.5 * (cfg_only - e_c)).clamp_min(1e-12)
    torch.testing.assert_close(ratio[:2], torch.full((2,), 0.3), **TOL)
    torch.testing.assert_close(guided[2], e_c[2])  # outside both windows: the conditional


@pytest.mark.parametrize(
    ("cfg", "term", "match"),
    [
        (1.0, STG(1.0, (0,), adaptive=0.5), r"stg adaptive ratio 0\.5 .* cfg scale is 1"),
        (
            CFG(3.0, stop=0.5),
            STG(1.0, (0,), adaptive=0.5),
            r"adaptive stg term's window \(0\.0, 1\.0\) must lie within the cfg window \(0\.0, 0\.5\)",
        ),
    ],
)
def test_adaptive_needs_cfg_on_its_window(model, cfg, term, match):
    with pytest.raises(ValueError, match=match):
        guided_model_fn(model, y=torch.tensor([1]), cfg_scale=cfg, stg=[term])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"adaptive": 0.0}, r"stg adaptive ratio must be > 0, got 0\.0"),
        ({"adaptive": "0.5"}, r"stg adaptive ratio must be a finite number > 0, got '0\.5'"),
        ({"adaptive_schedule": "cosine"}, r"stg adaptive schedule must be one of .*'cosine'"),
    ],
)
def test_bad_adaptive_terms(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STG(1.0, (0,), **kwargs)


def _parse(argv, from_model=False):
    parser = argparse.ArgumentParser()
    add_guidance_arguments(parser, from_model=from_model)
    # The sampling options sampling_settings fills besides guidance.
    parser.set_defaults(sampler=None, steps=None)
    return parser, parser.parse_args(argv)


def test_flag_per_term_and_errors(capsys):
    parser, args = _parse(["--stg-blocks", "0", "--stg-adaptive", "0.4,decay", "--stg-blocks", "3"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--stg-blocks", "0", "--stg-adaptive", "0.4,cosine"])
    assert "--stg-adaptive schedule must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--stg-blocks", "0", "--stg-adaptive", "x"])
    assert "--stg-adaptive must be RATIO[,SCHEDULE]" in capsys.readouterr().err
    assert guidance_from_args(args)[1] == (
        STG(1.0, (0,), adaptive=0.4, adaptive_schedule="decay"),
        STG(1.0, (3,), adaptive=0.4, adaptive_schedule="decay"),
    )


def test_sampling_json_round_trip(tmp_path):
    terms = (
        STG(2.0, (5, 0), ("attention_values", "transformer_block"), adaptive=0.25),
        STG(1.0, (3,), "attention_skip"),
    )
    data = {"cfg_scale": 4.0, "stg": [term.to_json() for term in terms]}
    (tmp_path / "sampling.json").write_text(json.dumps(data))
    parser, args = _parse([], from_model=True)
    settings = sampling_settings(args, sampling_defaults(tmp_path))
    assert guidance_from_options(settings)[1] == terms
    with pytest.raises(ValueError, match="no step window"):
        STG(1.0, (0,), start=0.5).to_json()
    (tmp_path / "sampling.json").write_text(json.dumps({"stg": [{"blocks": [0], "adaptive": -1}]}))
    with pytest.raises(ValueError, match=r"sampling\.json: stg adaptive ratio must be > 0"):
        sampling_defaults(tmp_path)
