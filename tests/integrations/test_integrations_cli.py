"""`slatte convert` / `slatte finetune` sub-commands, registered on a bare argparse parser as
the main CLI does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slatte.integrations.cli import add_convert_parser, add_finetune_parser
from slatte.models import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "latte_official_tiny.safetensors"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slatte")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    add_finetune_parser(sub)
    return parser


def test_convert_writes_a_model_directory_that_reproduces_latte(tmp_path, capsys):
    data = load_file(str(FIXTURE))
    state = {k.removeprefix("model."): v for k, v in data.items() if k.startswith("model.")}
    torch.save(state, tmp_path / "latte.pt")
    args = _parser().parse_args(
        ["convert", "latte-official", str(tmp_path / "latte.pt"), str(tmp_path / "out"),
         "--num-heads", "2"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["config"]["depth"] == 4
    model = load_model(tmp_path / "out")
    with torch.no_grad():
        out = model(data["input.x"], data["input.t"], data["input.y"])
    torch.testing.assert_close(out, data["output"], atol=1e-4, rtol=1e-4)


def test_finetune_arguments_map_to_the_config(tmp_path):
    args = _parser().parse_args(
        ["finetune", str(tmp_path / "missing"), str(tmp_path / "out"), "--latent-shape",
         "16,21,60,104", "--sla-critical", "0.1", "--sla-linear-scope", "all"]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no config.json"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["finetune", "m", "o", "--latent-shape", "16,x"])
