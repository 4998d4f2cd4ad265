"""DDP, FSDP2 and sequence-parallel training on 2 gloo processes follow the single-process loss
curve for the same global batch; an FSDP checkpoint written by 2 processes resumes on 1.

One spawn runs every 2-process training (spawning costs seconds); the tests compare its files.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from dist_testing import free_port, spawn

from slatte.models import load_model
from slatte.training import TrainConfig, Trainer
from slatte.training.checkpoint import latest_checkpoint
from slatte.training.sharded_checkpoint import is_sharded_checkpoint

WORLD = 2
STEPS = 4
RUNS_2P = {  # name: TrainConfig overrides of the 2-process runs
    "ddp": dict(parallel="ddp"),
    "fsdp": dict(parallel="fsdp"),
    "fsdp_sp": dict(parallel="fsdp", sequence_parallel=2, grad_checkpointing=True),
    "fsdp_half": dict(parallel="fsdp", steps=2),  # resumed on 1 process below
}


def tiny(out_dir, **kw) -> TrainConfig:
    base = dict(
        out_dir=str(out_dir),
        model="Latte-T/2",
        num_frames=2,
        size=8,
        batch_size=4,
        steps=STEPS,
        log_every=1,
        ckpt_every=2,
        sample_steps=1,
        seed=7,
        ema_decay=0.9,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _worker(rank: int, world: int, root: str, ports: list[int]) -> None:
    for (name, overrides), port in zip(RUNS_2P.items(), ports, strict=True):
        # Each run joins and leaves a process group; a fresh port keeps a late process from
        # meeting the previous run's rendezvous.
        os.environ["MASTER_PORT"] = str(port)
        Trainer(tiny(f"{root}/{name}", **overrides)).fit()


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_train")
    spawn(_worker, WORLD, str(root), [free_port() for _ in RUNS_2P])
    Trainer(tiny(root / "single")).fit()
    Trainer(tiny(root / "fsdp_half", parallel="fsdp"), resume=True).fit()
    return root


@pytest.mark.parametrize("name", ["ddp", "fsdp", "fsdp_sp"])
def test_two_processes_follow_the_single_process_loss_curve(runs, name):
    reference = losses(runs / "single")
    assert len(reference) == STEPS
    assert losses(runs / name) == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_fsdp_checkpoint_holds_the_same_ema_as_single_process(runs):
    ckpt = latest_checkpoint(runs / "fsdp")
    assert ckpt.name == f"step_{STEPS:07d}"
    assert len(list((ckpt / "sharded").glob("*.distcp"))) == WORLD  # one shard file per rank
    ema_fsdp = load_model(ckpt / "model").state_dict()
    ema_single = load_model(latest_checkpoint(runs / "single") / "model").state_dict()
    for key, value in ema_single.items():
        torch.testing.assert_close(ema_fsdp[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_sharded_checkpoint_of_two_processes_resumes_exactly_on_one(runs):
    """2 FSDP processes train 2 steps; 1 process resumes from their shards for 2 more (and
    writes shards again, for any number of processes to go on from)."""
    assert is_sharded_checkpoint(latest_checkpoint(runs / "fsdp_half"))
    assert losses(runs / "fsdp_half") == pytest.approx(losses(runs / "fsdp"), rel=1e-5, abs=1e-6)
    resumed = load_model(latest_checkpoint(runs / "fsdp_half") / "model").state_dict()
    straight = load_model(latest_checkpoint(runs / "fsdp") / "model").state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)
