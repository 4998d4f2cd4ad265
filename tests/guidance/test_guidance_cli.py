"""The guidance command-line options: parsing into CFG / STG terms and clear errors."""

import argparse

import pytest

from slatte.guidance import STG
from slatte.guidance.cli_args import add_guidance_arguments, guidance_from_args


def _parser(**kwargs):
    parser = argparse.ArgumentParser(prog="slatte sample")
    add_guidance_arguments(parser, **kwargs)
    return parser


def _parse(argv, **kwargs):
    parser = _parser(**kwargs)
    return guidance_from_args(parser.parse_args(argv), parser)


def test_defaults_are_no_guidance():
    assert _parse([]) == (1.0, (), 0.0)
    # from_model: left unset for the model's sampling.json, and the help says so.
    args = _parser(from_model=True).parse_args([])
    assert (args.cfg_scale, args.guidance_rescale) == (None, None)
    assert "sampling.json" in _parser(from_model=True).format_help()


def test_single_term_as_in_the_issue():
    argv = "--cfg-scale 4 --stg-scale 1.0 --stg-blocks 9 --stg-strategy transformer_block "
    argv += "--stg-rescale 0.7 --stg-window 0,1"
    assert _parse(argv.split()) == (4.0, (STG(1.0, (9,), "transformer_block", 0.0, 1.0),), 0.7)


def test_per_depth_strategies_one_per_block_of_the_term():
    argv = "--stg-blocks 5,0 --stg-strategy attention_values,transformer_block "
    argv += "--stg-blocks 2 --stg-strategy attention_skip"
    terms = _parse(argv.split())[1]
    assert terms == (
        STG(1.0, (0, 5), ("transformer_block", "attention_values")),
        STG(1.0, (2,), "attention_skip"),
    )


def test_several_terms_pair_by_position_and_single_values_are_shared():
    argv = "--stg-blocks 4 --stg-blocks 5,7 --stg-scale 1.0 --stg-scale 0.5 "
    argv += "--stg-strategy attention_values --stg-window 0,0.5 --guidance-rescale 0.3"
    cfg, terms, rescale = _parse(argv.split())
    assert terms == (
        STG(1.0, (4,), "attention_values", 0.0, 0.5),
        STG(0.5, (5, 7), "attention_values", 0.0, 0.5),
    )
    assert (cfg, rescale) == (1.0, 0.3)
    # Defaults for the options left out.
    assert _parse(["--stg-blocks", "2"])[1] == (STG(1.0, (2,)),)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--cfg-scale -1", "--cfg-scale must be >= 0, got -1.0"),
        ("--cfg-scale x", "--cfg-scale must be a number >= 0, got 'x'"),
        ("--stg-blocks 1,a", "--stg-blocks must be block indices separated by commas"),
        ("--stg-blocks 3,3", "--stg-blocks must not repeat a block index"),
        ("--stg-blocks -2", "--stg-blocks must be one or more block indices >= 0"),
        ("--stg-blocks 1 --stg-strategy skip", "--stg-strategy must be one of"),
        (
            "--stg-blocks 1 --stg-strategy transformer_block,skip",
            "--stg-strategy must be one of ('transformer_block'",
        ),
        (
            "--stg-blocks 1,2,3 --stg-strategy transformer_block,attention_values",
            "stg strategy must be one strategy name or one per block (3 for blocks (1, 2, 3))",
        ),
        ("--stg-blocks 1 --stg-window 0.6,0.2", "--stg-window must satisfy 0 <= start < stop <= 1"),
        ("--stg-blocks 1 --stg-window 0.5", "--stg-window must be START,STOP"),
        ("--stg-rescale 1.5", "--guidance-rescale must lie in [0, 1]"),
        ("--stg-scale 2", "--stg-scale was given without --stg-blocks"),
        (
            "--stg-blocks 1 --stg-blocks 2 --stg-blocks 3 --stg-scale 1 --stg-scale 2",
            "--stg-scale was given 2 times for 3 STG terms",
        ),
    ],
)
def test_bad_options_end_with_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv.split())
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_parser_inconsistent_options_raise_value_error():
    args = _parser().parse_args(["--stg-window", "0,0.5"])
    with pytest.raises(ValueError, match="--stg-window was given without --stg-blocks"):
        guidance_from_args(args)
