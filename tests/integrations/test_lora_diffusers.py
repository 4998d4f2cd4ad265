"""LoRA fine-tuning of a tiny random diffusers Wan (`slatte finetune --lora-rank`): the adapter
loads through peft and through diffusers' own LoRA loaders, and the base stays as it was."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from diffusers_testing import model_inputs, tiny_wan

pytest.importorskip("peft")

from slatte.integrations.diffusers_sla import from_pretrained_sla  # noqa: E402
from slatte.integrations.finetune import FinetuneConfig, finetune  # noqa: E402
from slatte.lora import load_adapter  # noqa: E402
from slatte.ops import SLAConfig  # noqa: E402


def _hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _velocity(model):
    with torch.no_grad():
        return model(**model_inputs("wan"), return_dict=False)[0]


def test_lora_finetune_saves_an_adapter_diffusers_and_peft_load_alike(tmp_path):
    dense = copy.deepcopy(tiny_wan(num_layers=1))
    with torch.no_grad():  # weights large enough that a rank-2 update shows in the output
        dense.blocks[0].attn1.to_out[0].weight.mul_(20.0)
    dense.save_pretrained(tmp_path / "dense")
    stored = _hashes(tmp_path / "dense")
    cfg = FinetuneConfig(
        model_dir=str(tmp_path / "dense"),
        output_dir=str(tmp_path / "out"),
        steps=3,
        lr=1e-2,
        ema_decay=0.0,
        sla=SLAConfig(critical=1, negligible=0, block_q=16, block_k=16),
        latent_shape=(4, 3, 8, 8),
        log_every=1,
        lora_rank=2,
        lora_alpha=4.0,  # scaling 2: a loader that ignored alpha would be caught
        trainable="lora+sla",
    )
    finetune(cfg)
    assert _hashes(tmp_path / "dense") == stored
    adapter = tmp_path / "out" / "adapter"
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "pytorch_lora_weights.safetensors",
    }
    base = from_pretrained_sla(tmp_path / "out")
    # Only the SLA projections of the base changed; everything else is the dense model's.
    for name, value in dense.state_dict().items():
        torch.testing.assert_close(base.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert base.blocks[0].attn1.sla.proj_l.weight.abs().max() > 0

    with_peft = load_adapter(from_pretrained_sla(tmp_path / "out"), adapter)
    expected = _velocity(with_peft)
    assert not torch.allclose(expected, _velocity(base))

    from diffusers import WanPipeline

    state, metadata = WanPipeline.lora_state_dict(adapter, return_lora_metadata=True)
    by_pipeline = from_pretrained_sla(tmp_path / "out")
    WanPipeline.load_lora_into_transformer(state, transformer=by_pipeline, metadata=metadata)
    torch.testing.assert_close(_velocity(by_pipeline), expected, rtol=1e-5, atol=1e-5)

    by_model = from_pretrained_sla(tmp_path / "out")
    by_model.load_lora_adapter(
        adapter, prefix="transformer", weight_name="pytorch_lora_weights.safetensors"
    )
    torch.testing.assert_close(_velocity(by_model), expected, rtol=1e-5, atol=1e-5)


def test_lora_finetune_bad_options(tmp_path):
    common = dict(model_dir="m", output_dir="o", latent_shape=(4, 3, 8, 8))
    with pytest.raises(ValueError, match="lora_rank must be an integer >= 1, got -1"):
        FinetuneConfig(**common, lora_rank=-1)
    with pytest.raises(ValueError, match="trainable 'lora' needs lora_rank"):
        FinetuneConfig(**common, trainable="lora")
    with pytest.raises(ValueError, match="trainable must be one of \\('lora', 'lora\\+sla'\\)"):
        FinetuneConfig(**common, lora_rank=2, trainable="sla")
    assert FinetuneConfig(**common, lora_rank=2).trained == "lora"
