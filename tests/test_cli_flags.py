"""Flags from dataclass fields, and the SLA flags laid over a model's stored SLA options."""

import argparse
import json
from dataclasses import dataclass, field

import pytest

from slatte.cli import main
from slatte.flags import add_flags, add_sla_arguments, attention_from_args, flag, given
from slatte.integrations.cli import add_finetune_parser
from slatte.ops.sla.config import SLAConfig
from slatte.training.config import RESUMABLE, TrainConfig

TRAIN = ["train", "--model", "Latte-T/2", "--frames", "2", "--size", "16", "--batch-size", "2"]
TRAIN += ["--sample-steps", "1", "--steps", "1", "--block-pattern", "full"]


@dataclass(frozen=True)
class Example:
    count: int = field(default=3, metadata=flag("how many"))
    kind: str = field(default="a", metadata=flag("which", name="sort", choices=("a", "b")))
    fast: bool = field(default=False, metadata=flag("go fast"))
    rate: float | None = field(default=None, metadata=flag("a rate"))
    hidden: int = 0


def _parse(argv, cls=Example, **kw):
    parser = argparse.ArgumentParser()
    add_flags(parser, cls, **kw)
    return parser, parser.parse_args(argv)


def test_flags_come_from_field_metadata_and_only_given_ones_are_laid_over():
    parser, args = _parse(["--count", "5", "--fast"])
    assert given(args, Example) == {"count": 5, "fast": True}
    assert given(_parse([])[1], Example) == {}
    assert given(_parse(["--sort", "b", "--rate", "0.5"])[1], Example) == {"kind": "b", "rate": 0.5}
    text = parser.format_help()
    assert "how many (default: 3)" in text and "--hidden" not in text
    with pytest.raises(SystemExit):
        _parse(["--sort", "c"])


def test_train_config_flags_cover_every_field_but_the_model_overrides():
    _, args = _parse([])
    parser = argparse.ArgumentParser()
    add_flags(parser, TrainConfig)
    options = {a.dest for a in parser._actions if a.dest != "help"}
    assert options == set(TrainConfig.__dataclass_fields__) - {"model_overrides"}
    assert set(RESUMABLE) <= options


def test_sla_flags_overlay_the_stored_options_field_by_field():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attention", default=None)
    add_sla_arguments(parser)
    stored = SLAConfig(critical=0.3, negligible=0.2, block_q=16, block_k=32, feature_map="elu")
    args = parser.parse_args(["--sla-critical", "0.1", "--sla-block-k", "16"])
    backend, sla = attention_from_args(args, "sla", stored)
    assert backend == "sla"
    assert sla == SLAConfig(critical=0.1, negligible=0.2, block_q=16, block_k=16, feature_map="elu")
    # --attention alone keeps every stored option.
    args = parser.parse_args(["--attention", "sla_reference"])
    assert attention_from_args(args, "sla", stored) == ("sla_reference", stored)
    # SLA flags on a model that stays dense cannot apply.
    args = parser.parse_args(["--sla-negligible", "0.3"])
    with pytest.raises(ValueError, match="--sla-negligible.*dense.*--attention sla"):
        attention_from_args(args, "sdpa", stored)


@pytest.fixture(scope="module")
def sla_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("sla") / "run"
    flags = ["--attention", "sla_reference", "--sla-critical", "0.5", "--sla-block-q", "16"]
    flags += ["--sla-block-k", "16", "--sla-feature-map", "elu"]
    assert main([*TRAIN, "--out", str(out), *flags]) == 0
    return out / "checkpoints" / "step_0000001" / "model"


def _stored_sla(run):
    model_dir = run / "checkpoints" / "step_0000001" / "model"
    config = json.loads((model_dir / "config.json").read_text())["config"]
    return config["attention_backend"], config["sla"]


@pytest.mark.parametrize(
    "flags, backend, negligible",
    [
        # One SLA flag replaces its field and keeps the init model's others.
        (["--sla-negligible", "0.2"], "sla_reference", 0.2),
        # --attention alone keeps every stored SLA option.
        (["--attention", "sla"], "sla", 0.1),
    ],
)
def test_train_flags_overlay_the_init_models_attention(
    sla_model, tmp_path, flags, backend, negligible
):
    out = tmp_path / "run"
    assert main([*TRAIN, "--init-from", str(sla_model), *flags, "--out", str(out)]) == 0
    stored_backend, sla = _stored_sla(out)
    assert stored_backend == backend
    kept = (sla["critical"], sla["block_q"], sla["block_k"], sla["feature_map"])
    assert kept == (0.5, 16, 16, "elu") and sla["negligible"] == negligible


def test_sla_flag_on_a_dense_model_is_an_error(tmp_path, capsys):
    assert main([*TRAIN, "--sla-critical", "0.2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--sla-critical" in err and "dense" in err
    assert not (tmp_path / "run").exists()
    argv = ["sample", "--checkpoint", "latte-digits-m", "--sla-critical", "0.2"]
    assert main([*argv, "--steps", "1", "--out", str(tmp_path / "s")]) == 2
    assert "--sla-critical" in capsys.readouterr().err


def test_finetune_has_the_same_sla_flags():
    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "m", "o", "--sla-projection", "identity"])
    assert given(args, SLAConfig, prefix="sla-") == {"projection": "identity"}
