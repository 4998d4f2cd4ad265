"""SLA fine-tuning of a tiny random diffusers Wan: distillation must pull the SLA model towards
its dense teacher; the result reloads with its projections."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import tiny_wan
from safetensors.torch import save_file

from slatte.integrations.diffusers_sla import enable_sla, from_pretrained_sla
from slatte.integrations.finetune import FinetuneConfig, finetune
from slatte.ops import SLAConfig

SLA = SLAConfig(critical=1, negligible=1, block_q=16, block_k=16)


def _distill_loss(model, teacher, generator):
    x = torch.randn(4, 4, 3, 8, 8, generator=generator)
    t = torch.rand(4, generator=generator) * 1000
    text = torch.randn(4, 8, 32, generator=generator)
    with torch.no_grad():
        target = teacher(x, t, text).sample
        return (model(x, t, text).sample - target).square().mean().item()


def test_distillation_reduces_the_loss_against_the_dense_teacher(tmp_path):
    dense = tiny_wan(num_layers=1)
    with torch.no_grad():
        # Make self-attention matter in the random model, so that SLA's error is visible.
        dense.blocks[0].attn1.to_out[0].weight.mul_(20.0)
        dense.blocks[0].scale_shift_table.fill_(0.5)
    dense.save_pretrained(tmp_path / "dense")
    sla = SLAConfig(critical=1, negligible=0, block_q=16, block_k=16)
    cfg = FinetuneConfig(
        model_dir=str(tmp_path / "dense"),
        output_dir=str(tmp_path / "sla"),
        steps=8,
        batch_size=2,
        lr=1e-3,
        ema_decay=0.0,
        sla=sla,
        latent_shape=(4, 3, 8, 8),
        log_every=1,
    )
    assert len(finetune(cfg)["losses"]) == 8
    teacher = from_pretrained_sla(tmp_path / "dense")
    before = enable_sla(from_pretrained_sla(tmp_path / "dense"), sla)
    after = from_pretrained_sla(tmp_path / "sla")
    assert after.blocks[0].attn1.sla.config == sla
    assert after.blocks[0].attn1.sla.proj_l.weight.abs().max() > 0  # the projection trained
    loss_before = _distill_loss(before, teacher, torch.Generator().manual_seed(7))
    loss_after = _distill_loss(after, teacher, torch.Generator().manual_seed(7))
    assert loss_after < 0.85 * loss_before


def test_flow_mode_reads_latent_clips_and_bad_configs_fail(tmp_path):
    dense = tiny_wan()
    dense.save_pretrained(tmp_path / "dense")
    (tmp_path / "clips").mkdir()
    for i in range(2):
        save_file(
            {"latents": torch.randn(4, 3, 8, 8), "text": torch.randn(5 + i, 32)},
            str(tmp_path / "clips" / f"{i}.safetensors"),
        )
    cfg = FinetuneConfig(
        model_dir=str(tmp_path / "dense"), output_dir=str(tmp_path / "out"), mode="flow",
        data=str(tmp_path / "clips"), steps=2, batch_size=2, sla=SLA, trainable="sla", log_every=1,
    )  # fmt: skip
    losses = finetune(cfg)["losses"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    out = from_pretrained_sla(tmp_path / "out")
    # trainable="sla": everything but the projections is still the dense model's.
    torch.testing.assert_close(out.blocks[1].ffn.net[2].weight, dense.blocks[1].ffn.net[2].weight)

    with pytest.raises(ValueError, match="mode 'flow' needs data"):
        FinetuneConfig(model_dir="m", output_dir="o", mode="flow")
    with pytest.raises(ValueError, match="mode must be one of"):
        FinetuneConfig(model_dir="m", output_dir="o", mode="x", latent_shape=(4, 3, 8, 8))
    missing = FinetuneConfig(
        model_dir=str(tmp_path / "nope"), output_dir=str(tmp_path / "o"), latent_shape=(4, 3, 8, 8)
    )
    with pytest.raises(FileNotFoundError, match="no config.json"):
        finetune(missing)
