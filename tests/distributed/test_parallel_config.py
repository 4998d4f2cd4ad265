"""Validation of the multi-process training options, in one process."""

from __future__ import annotations

import pytest

from slatte.cli import main
from slatte.training import TrainConfig
from slatte.training.fsdp import mixed_precision_policy


def test_parallel_options_are_validated():
    with pytest.raises(ValueError, match="parallel must be one of"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="'fsdp' supports precision fp32 or bf16"):
        TrainConfig(parallel="fsdp", precision="fp16")
    with pytest.raises(ValueError, match="num_frames must be divisible by it"):
        TrainConfig(num_frames=6, sequence_parallel=4)
    with pytest.raises(ValueError, match="positive integer"):
        TrainConfig(sequence_parallel=0)
    with pytest.raises(ValueError, match="use bf16"):
        mixed_precision_policy("fp16")


def test_bf16_policy_reduces_gradients_in_fp32():
    import torch

    policy = mixed_precision_policy("bf16")
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert mixed_precision_policy("fp32").param_dtype is None


def test_sequence_parallel_without_enough_processes_is_a_one_line_error(tmp_path, capsys):
    code = main(
        ["train", "--out", str(tmp_path / "run"), "--model", "Latte-T/2", "--frames", "2",
         "--size", "8", "--steps", "1", "--sequence-parallel", "2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "slatte train: error: sequence_parallel must be a positive divisor" in err
