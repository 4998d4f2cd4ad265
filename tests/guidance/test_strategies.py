"""The STG strategy table: names, lookup errors, and the help text the CLI shows."""

import argparse

import pytest
import torch

from slatte.guidance.cli_args import add_guidance_arguments
from slatte.guidance.strategies import STRATEGIES, get_strategy, strategies_help


def test_lookup_by_name_and_unknown_names():
    assert get_strategy("attention_skip") is STRATEGIES["attention_skip"]
    with pytest.raises(ValueError, match=r"stg strategy must be one of \(.*\), got 'residual'"):
        get_strategy("residual")


def test_attention_replacements():
    x = torch.randn(2, 3, 4)
    identity_map = lambda z: 2 * z  # noqa: E731 - a stand-in for out_proj(V)
    assert STRATEGIES["transformer_block"].skips_block
    assert torch.equal(STRATEGIES["attention_block"].attention_output(x, identity_map), 0 * x)
    assert torch.equal(STRATEGIES["attention_skip"].attention_output(x, identity_map), x)
    assert torch.equal(STRATEGIES["attention_values"].attention_output(x, identity_map), 2 * x)
    with pytest.raises(ValueError, match="skips the whole block"):
        STRATEGIES["transformer_block"].attention_output(x, identity_map)


def test_cli_help_and_choices_come_from_the_table():
    parser = argparse.ArgumentParser()
    add_guidance_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "stg_strategy")
    # The option accepts exactly the table's names (alone or one per block).
    assert [action.type(name) for name in STRATEGIES] == list(STRATEGIES)
    assert action.type(",".join(STRATEGIES)) == tuple(STRATEGIES)
    with pytest.raises(argparse.ArgumentTypeError, match="must be one of"):
        action.type("layer_skip")
    assert strategies_help() in action.help
    for strategy in STRATEGIES.values():
        assert f"{strategy.name}: {strategy.summary}" in strategies_help()
