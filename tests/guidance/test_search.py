"""The STG search: the signal on a tiny random Latte (forked evaluation == separate forward
passes), the ranking, the verification rule and the sampling.json it writes."""

import json

import pytest
import torch
from test_guided_model_fn import _model  # the tiny random Latte made there

from slatte.cli import main
from slatte.guidance import STG
from slatte.guidance.search import _noised, perturbation_signals
from slatte.guidance.strategies import STRATEGIES
from slatte.models import VideoDiT, VideoDiTConfig, save_model
from slatte.pretrained import sampling_defaults
from slatte.stg_search import stg_search, write_sampling_json


@pytest.fixture(scope="module")
def model():
    return _model("full", depth=3, num_classes=5)


def _x0(model, batch=2):
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    shape = (batch, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size)
    return torch.randn(shape, generator=gen).clamp(-1, 1)


def test_signal_matches_separate_forward_passes_and_ranks_by_score(model):
    x0, y = _x0(model), torch.tensor([1, 4])
    candidates = perturbation_signals(model, x0, y=y, progress=(0.2, 0.8), seed=5)
    assert len(candidates) == 3 * len(STRATEGIES)
    assert {(c.block, c.strategy) for c in candidates} == {
        (b, s) for b in range(3) for s in STRATEGIES
    }
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(c.score == -c.alignment for c in candidates)
    # Reference: the same noised inputs, one plain forward per branch.
    x, t = _noised(x0, (0.2, 0.8), 1000, 5)
    yy = y.repeat(2)
    with torch.no_grad():
        e_c = model(x, t, yy)[:, :, :2].flatten(1).double()
        e_u = model(x, t, None)[:, :, :2].flatten(1).double()
        for c in candidates[:: len(STRATEGIES) - 1]:
            e_p = model(x, t, yy, perturbations={c.block: STRATEGIES[c.strategy]})
            diff = e_c - e_p[:, :, :2].flatten(1).double()
            size = (diff.norm(dim=1) / (e_c - e_u).norm(dim=1)).mean().item()
            cos = torch.nn.functional.cosine_similarity(diff, e_c - e_u, dim=1).mean().item()
            assert c.size == pytest.approx(size, rel=1e-4)
            assert c.alignment == pytest.approx(cos, abs=1e-5)


def test_signal_bad_input(model):
    x0 = _x0(model)
    with pytest.raises(ValueError, match=r"blocks must lie in 0\.\.2, got 3"):
        perturbation_signals(model, x0, y=torch.tensor([0, 1]), blocks=(3,))
    with pytest.raises(ValueError, match="needs labels y"):
        perturbation_signals(model, x0)
    with pytest.raises(ValueError, match=r"progress points must lie in \[0, 1\], got 1\.5"):
        perturbation_signals(model, x0, y=torch.tensor([0, 1]), progress=(1.5,))


def test_search_needs_a_class_conditional_model_and_cfg(model):
    unconditional = _model("full", depth=1, num_classes=0)
    with pytest.raises(ValueError, match=r"this model is unconditional \(num_classes=0\)"):
        stg_search(unconditional, num_inputs=1)
    with pytest.raises(ValueError, match="give a cfg scale != 1"):
        stg_search(model, cfg_scale=1.0)
    with pytest.raises(ValueError, match="top must be an integer >= 1, got 0"):
        stg_search(model, top=0)
    with pytest.raises(ValueError, match=r"got Linear; for a diffusers pipeline use .*"):
        stg_search(torch.nn.Linear(2, 2))


def test_search_without_data_takes_the_top_signal_and_writes_sampling_json(model, tmp_path):
    recommended = {"sampler": "ddim", "steps": 7, "cfg_scale": 3.0}
    result = stg_search(model, recommended=recommended, num_inputs=2, steps=2)
    top = result.candidates[0]
    assert result.verified == []  # not a digits model: the signal alone decides
    assert result.chosen == STG(1.0, (top.block,), top.strategy)
    assert result.sampling == {
        "sampler": "ddim",
        "steps": 7,
        "cfg_scale": 3.0,
        "guidance_rescale": 0.7,
        "stg": [result.chosen.to_json()],
    }
    model_dir = save_model(model, tmp_path / "model")
    with pytest.raises(ValueError, match="is the model directory"):
        write_sampling_json(result.sampling, model_dir, model_dir)
    path = write_sampling_json(result.sampling, tmp_path / "out", model_dir)
    read = sampling_defaults(path.parent)
    assert STG.from_json(read["stg"][0]) == result.chosen


def test_search_verifies_a_digits_model_by_its_metrics(tmp_path):
    torch.manual_seed(0)
    # One channel and ten classes make it a digits model: verified with the digit metrics.
    config = VideoDiTConfig(
        input_size=8, num_frames=3, in_channels=1, hidden_size=32, depth=2, num_heads=2,
        patch_size=2, num_classes=10, block_pattern="alternating",
    )  # fmt: skip
    digits = VideoDiT(config).eval()
    with torch.no_grad():
        for param in digits.parameters():
            if not param.any():
                param.normal_(std=0.3)
    result = stg_search(digits, num_inputs=2, top=3, num_videos=2, steps=2)
    assert [(v["block"], v["strategy"]) for v in result.verified] == [
        (c.block, c.strategy) for c in result.candidates[:3]
    ]
    best = max(v["frame_accuracy"] for v in result.verified)
    eligible = [v for v in result.verified if v["frame_accuracy"] >= best - 0.02]
    pick = max(eligible, key=lambda v: v["motion_smoothness"])
    assert result.chosen == STG(1.0, (pick["block"],), pick["strategy"])
    assert set(result.seconds) == {"signal", "verify"}


def test_cli_writes_sampling_json_beside_the_model(model, tmp_path, capsys):
    model_dir = save_model(model, tmp_path / "model")
    (model_dir / "sampling.json").write_text(json.dumps({"cfg_scale": 2.0, "steps": 3}))
    out = tmp_path / "search"
    argv = ["stg-search", str(model_dir), "--out", str(out), "--num-inputs", "2", "--steps", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out.split()[-1] == str(out / "sampling.json")
    written = sampling_defaults(out)
    assert (written["cfg_scale"], written["steps"]) == (2.0, 3)
    assert json.loads((model_dir / "sampling.json").read_text()) == {"cfg_scale": 2.0, "steps": 3}
    report = json.loads((out / "search.json").read_text())
    assert report["chosen"] == written["stg"][0] | {"blocks": list(written["stg"][0]["blocks"])}
    argv = ["stg-search", str(model_dir), "--out", str(out), "--prompt", "a cat", "--height", "8"]
    assert main(argv + ["--cfg-scale-2", "3"]) == 2
    err = capsys.readouterr().err
    assert "--prompt, --cfg-scale-2, --height apply to a diffusers pipeline directory" in err
