"""SLA fine-tuning of a tiny diffusers Wan on the one trainer: exact resume, the run folder's
metrics, and both objectives reached by name."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from diffusers_testing import tiny_wan
from safetensors.torch import load_file, save_file

from slatte.diffusion.objectives import DistillObjective, FlowObjective
from slatte.integrations.diffusers_sla import from_pretrained_sla
from slatte.integrations.finetune import DiffusersFinetuneTask, FinetuneConfig, finetune
from slatte.ops import SLAConfig
from slatte.training import Trainer
from slatte.training.checkpoint import latest_checkpoint
from slatte.training.sharded_checkpoint import is_sharded_checkpoint

SLA = SLAConfig(critical=1, negligible=0, block_q=16, block_k=16)  # the linear branch works


@pytest.fixture
def dense_dir(tmp_path):
    tiny_wan(num_layers=1).save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


def _config(dense_dir, out, **kw):
    base = dict(
        model_dir=str(dense_dir),
        output_dir=str(out),
        latent_shape=(4, 2, 8, 8),
        batch_size=2,
        lr=1e-3,
        ema_decay=0.5,
        sla=SLA,
        log_every=1,
        ckpt_every=2,
        seed=3,
    )
    base.update(kw)
    return FinetuneConfig(**base)


def _weights(directory):
    (file,) = directory.glob("*.safetensors")
    return load_file(str(file))


def test_a_resumed_finetune_equals_the_straight_run_bit_for_bit(tmp_path, dense_dir):
    straight = finetune(_config(dense_dir, tmp_path / "a", steps=3))
    finetune(_config(dense_dir, tmp_path / "b", steps=2))
    resumed = finetune(_config(dense_dir, tmp_path / "b", steps=3), resume=True)
    assert resumed["losses"] == straight["losses"] and len(straight["losses"]) == 3
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert set(a) == set(b) and any(".sla.proj_l." in name for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    run = tmp_path / "b" / "training"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    # The figures are the objective's: a flow-matching loss has no "mse" / "vb" parts.
    assert set(lines[0]) == {"step", "loss", "grad_norm", "lr", "clips_per_s"}
    assert (run / "loss_curve.png").stat().st_size > 0
    assert is_sharded_checkpoint(latest_checkpoint(run))
    # The output is the diffusers format + slatte_sla.json, with the trained SLA projections.
    out = from_pretrained_sla(tmp_path / "b")
    assert out.blocks[0].attn1.sla.config == SLA
    assert out.blocks[0].attn1.sla.proj_l.weight.abs().max() > 0
    saved = json.loads((tmp_path / "b" / "slatte_finetune.json").read_text())
    assert saved["final_loss"] == resumed["losses"][-1]


@pytest.mark.parametrize(
    ("mode", "objective"), [("distill", DistillObjective), ("flow", FlowObjective)]
)
def test_the_objective_is_chosen_by_name(tmp_path, dense_dir, mode, objective):
    (tmp_path / "clips").mkdir()
    for i in range(2):
        save_file(
            {"latents": torch.randn(4, 2, 8, 8), "text": torch.randn(3 + i, 32)},
            str(tmp_path / "clips" / f"{i}.safetensors"),
        )
    # Every key block critical: SLA is the dense attention, so the student starts as its
    # teacher (distillation loss 0) but not as the data's velocity (flow loss > 0).
    sla = SLAConfig(critical=1.0, negligible=0, block_q=16, block_k=16)
    cfg = _config(dense_dir, tmp_path / "out", mode=mode, data=str(tmp_path / "clips"), sla=sla)
    trainer = Trainer(cfg.train_config(), task=functools.partial(DiffusersFinetuneTask, cfg))
    assert type(trainer.objective) is objective
    assert (trainer.task.teacher is not None) == (mode == "distill")
    loss = trainer.train_step(next(iter(trainer._loader())))["loss"]
    if mode == "distill":
        assert loss < 1e-8
    else:
        assert loss > 0.1
