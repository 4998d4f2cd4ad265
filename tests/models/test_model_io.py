"""Model directories: round trip, atomic replacement, and clear errors for broken ones."""

from __future__ import annotations

import json

import pytest
import torch
from model_testing import tiny_inputs, tiny_model

from slatte.models import FORMAT_VERSION, io, load_config, load_model, save_model


def test_round_trip_reproduces_outputs(tmp_path):
    model = tiny_model(text_dim=12, block_pattern="full")
    path = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    # The weights are as readable as the config (safetensors alone would make them 0600).
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]
    assert json.loads((path / "config.json").read_text())["format_version"] == FORMAT_VERSION
    assert load_config(path) == model.config
    loaded = load_model(path)
    assert not loaded.training
    x, t, y, kw = tiny_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y, **kw), model(x, t, y, **kw), rtol=0, atol=0)


def test_saves_the_given_state_dict_and_loads_dtype(tmp_path):
    model = tiny_model(seed=0)
    ema = tiny_model(seed=5).state_dict()
    save_model(model, tmp_path / "m", state_dict=ema)
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    for name, value in loaded.state_dict().items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, ema[name].bfloat16(), rtol=0, atol=0)


def test_overwrite_is_atomic_and_refuses_foreign_directories(tmp_path, monkeypatch):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    save_model(first, tmp_path / "m")
    save_model(second, tmp_path / "m")
    w = load_model(tmp_path / "m").state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(w, second.state_dict()["blocks.0.attn.qkv.weight"])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(first, tmp_path / "m")
    # The old checkpoint is intact and no temporary directory is left behind.
    w = load_model(tmp_path / "m").state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(w, second.state_dict()["blocks.0.attn.qkv.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["m"]

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_model(first, tmp_path / "notes")


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    path = save_model(tiny_model(), tmp_path / "m")
    weights = (path / "model.safetensors").read_bytes()

    (path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        load_model(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(path)
    (path / "model.safetensors").write_bytes(weights)

    config_text = (path / "config.json").read_text()
    (path / "config.json").write_text(config_text[:-10])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(path)
    data = json.loads(config_text)
    (path / "config.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        load_config(path)
    data["config"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="depth must be even"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(path)


def test_shape_mismatch_lists_the_keys(tmp_path):
    path = save_model(tiny_model(), tmp_path / "m")
    data = json.loads((path / "config.json").read_text())
    data["config"]["in_channels"] = 3
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"x_embedder\.proj\.weight: \(32, 8\) vs model \(32, 12\)"
    ):
        load_model(path)
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.0\.attn\.qkv\.bias'\]"):
        state = tiny_model().state_dict()
        del state["blocks.0.attn.qkv.bias"]
        save_model(tiny_model(), tmp_path / "n", state_dict=state)


def test_dense_checkpoint_loads_with_sla_backend_and_zero_projections(tmp_path):
    path = save_model(tiny_model(), tmp_path / "m")
    model = load_model(path, attention_backend="sla_reference")
    assert model.config.attention_backend == "sla_reference"
    projections = {k: v for k, v in model.state_dict().items() if ".sla.proj_l." in k}
    assert len(projections) == 2 * len(model.blocks)
    assert all(not v.any() for v in projections.values())
    # And back: an SLA checkpoint loads as dense, dropping the projections.
    sla_path = save_model(model, tmp_path / "sla")
    assert load_config(sla_path).attention_backend == "sla_reference"
    dense = load_model(sla_path, attention_backend="sdpa")
    assert not any(".sla." in k for k in dense.state_dict())
    assert io.WEIGHTS_NAME == "model.safetensors"
