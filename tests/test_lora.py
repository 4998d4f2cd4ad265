"""LoRA through peft on slatte's VideoDiT: training (`--lora-rank`), the saved adapter, sampling
with it (`--lora`, `--lora-scale`), merging (`convert merge-lora`) and bad input."""

import hashlib
import json

import pytest
import torch

pytest.importorskip("peft")

from slatte.cli import main  # noqa: E402
from slatte.lora import add_lora, load_adapter, merge_lora  # noqa: E402
from slatte.models import VideoDiT, load_model, model_config, save_model  # noqa: E402
from slatte.training import TrainConfig, Trainer  # noqa: E402
from slatte.training.checkpoint import latest_checkpoint  # noqa: E402


def tiny_model(seed=0, hidden_size=32):
    torch.manual_seed(seed)
    model = VideoDiT(
        model_config(
            "Latte-T/2",
            input_size=8,
            num_frames=2,
            in_channels=1,
            num_classes=10,
            hidden_size=hidden_size,
            num_heads=2,
            depth=2,
        )
    )
    with torch.no_grad():  # DiT zero-initialises its output layers: make every weight count
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model.eval()


def inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 1, 8, 8, generator=gen)
    return x, torch.tensor([3, 700]), torch.tensor([1, 4])


def hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.fixture
def base_dir(tmp_path):
    return save_model(tiny_model(), tmp_path / "base")


def lora_cfg(tmp_path, base_dir, name="run", **kw):
    options = dict(
        out_dir=str(tmp_path / name),
        init_from=str(base_dir),
        num_frames=2,
        size=8,
        batch_size=2,
        steps=3,
        log_every=1,
        ckpt_every=2,
        sample_every=0,
        sample_steps=1,
        seed=3,
        ema_decay=0.5,
        lr=1e-2,
        lora_rank=2,
        lora_targets="attn,mlp,adaln",
    )
    options.update(kw)
    return TrainConfig(**options)


def test_zero_initialised_adapters_leave_the_output_unchanged():
    model = tiny_model()
    before = model(*inputs())
    add_lora(model, rank=4, targets="attn,mlp,adaln")
    assert any("lora_B" in name for name, _ in model.named_parameters())
    torch.testing.assert_close(model(*inputs()), before, rtol=0, atol=0)


@pytest.mark.parametrize("trainable", ["lora", "lora+sla", "sla"])
def test_training_changes_only_the_adapters_and_keeps_the_base_on_disk(
    tmp_path, base_dir, trainable
):
    stored = hashes(base_dir)
    overrides = {"attention_backend": "sla_reference"} if "sla" in trainable else {}
    rank = None if trainable == "sla" else 2
    cfg = lora_cfg(
        tmp_path, base_dir, trainable=trainable, model_overrides=overrides, lora_rank=rank
    )
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    assert hashes(base_dir) == stored
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, start[k])}
    allowed = {"lora": ("lora_",), "sla": (".sla.proj_l.",)}
    allowed["lora+sla"] = allowed["lora"] + allowed["sla"]
    assert changed and all(any(a in k for a in allowed[trainable]) for k in changed), changed
    for part in trainable.split("+"):
        assert any(a in k for k in changed for a in allowed[part]), part
    trainable_count = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert result["trainable_parameters"] == trainable_count < result["total_parameters"]
    assert result["peak_memory_gib"] == "n/a (cpu)"


def test_saved_adapter_reloads_merges_and_scales(tmp_path, base_dir):
    trainer = Trainer(lora_cfg(tmp_path, base_dir))
    trainer.fit()
    ckpt = latest_checkpoint(tmp_path / "run")
    adapter = ckpt / "adapter"
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    expected = trainer.ema(*inputs())
    base_out = load_model(base_dir)(*inputs())
    assert not torch.allclose(expected, base_out)  # the adapters learned something

    reloaded = load_adapter(load_model(ckpt / "model"), adapter)
    torch.testing.assert_close(reloaded(*inputs()), expected, rtol=0, atol=0)

    off = load_adapter(load_model(base_dir), adapter, scale=0.0)
    torch.testing.assert_close(off(*inputs()), base_out, rtol=0, atol=0)

    stored = hashes(base_dir)
    assert main(["convert", "merge-lora", str(base_dir), str(adapter), str(tmp_path / "m")]) == 0
    assert hashes(base_dir) == stored
    merged = load_model(tmp_path / "m")
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(*inputs()), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merge_lora(reloaded)(*inputs()), expected, rtol=1e-5, atol=1e-5)


def test_resume_with_lora_continues_exactly(tmp_path, base_dir):
    straight = Trainer(lora_cfg(tmp_path, base_dir, name="a", steps=4))
    straight.fit()
    Trainer(lora_cfg(tmp_path, base_dir, name="b", steps=2)).fit()
    resumed = Trainer(lora_cfg(tmp_path, base_dir, name="b", steps=4), resume=True)
    assert resumed.step == 2
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)
    for name, value in straight.ema.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[name], value, msg=name)


def test_sample_cli_with_lora_scale_zero_equals_the_base_model(tmp_path, base_dir):
    model = tiny_model()
    add_lora(model, rank=2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    from slatte.lora import save_adapter, split_state_dict

    save_adapter(model, split_state_dict(model.state_dict())[1], tmp_path / "adapter")
    common = ["sample", "--checkpoint", str(base_dir), "--num-samples", "1", "--steps", "2"]
    common += ["--formats", "png", "--device", "cpu"]
    outs = {}
    for name, extra in {
        "base": [],
        "off": ["--lora", str(tmp_path / "adapter"), "--lora-scale", "0"],
        "on": ["--lora", str(tmp_path / "adapter")],
    }.items():
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        outs[name] = [p.read_bytes() for p in sorted((tmp_path / name).rglob("*.png"))]
    assert outs["base"] and outs["off"] == outs["base"]
    assert outs["on"] != outs["base"]


def test_bad_lora_input_is_a_clear_error(tmp_path, base_dir, capsys):
    with pytest.raises(ValueError, match="lora_rank must be an integer >= 1, got 0"):
        TrainConfig(lora_rank=0)
    with pytest.raises(ValueError, match="lora targets must be a comma list"):
        TrainConfig(lora_rank=2, lora_targets="attn,ffn")
    with pytest.raises(ValueError, match="trainable 'lora\\+sla' needs lora_rank"):
        TrainConfig(trainable="lora+sla")
    with pytest.raises(FileNotFoundError, match="LoRA adapter folder .*nowhere does not exist"):
        load_adapter(load_model(base_dir), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="the model has none"):
        Trainer(lora_cfg(tmp_path, base_dir, trainable="lora+sla"))

    other = tiny_model(hidden_size=64)
    add_lora(other, rank=2)
    from slatte.lora import save_adapter, split_state_dict

    save_adapter(other, split_state_dict(other.state_dict())[1], tmp_path / "wide")
    with pytest.raises(ValueError, match="made for another model: shape mismatches .*64"):
        load_adapter(load_model(base_dir), tmp_path / "wide")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config = json.loads((tmp_path / "wide" / "adapter_config.json").read_text())
    config["target_modules"] = ["to_q", "to_k"]
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    (foreign / "adapter_model.safetensors").write_bytes(
        (tmp_path / "wide" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="match no module of this VideoDiT.*to_q"):
        load_adapter(load_model(base_dir), foreign)
    stored = hashes(base_dir)
    argv = ["convert", "merge-lora", str(base_dir), str(tmp_path / "wide"), str(base_dir)]
    assert main(argv) != 0
    assert "OUT is MODEL_DIR" in capsys.readouterr().err
    assert hashes(base_dir) == stored
