"""Guidance terms: validation (bad input names argument, value and what is allowed) and the step
window convention."""

import pytest
import torch
from torch import nn

from slatte.guidance import CFG, STG, in_window
from slatte.guidance.strategies import STRATEGIES


def test_defaults_and_block_order():
    term = STG(1.0, blocks=(5, 2))
    assert term.strategy == "transformer_block"
    assert term.blocks == (2, 5) and term.first_block == 2
    skip = STRATEGIES["transformer_block"]
    assert term.perturbations == {2: skip, 5: skip}
    assert STG(0.5, blocks=3).blocks == (3,)
    assert not CFG().enabled and CFG(4.0).enabled


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": -0.5}, r"stg scale must be >= 0, got -0\.5"),
        ({"scale": float("nan")}, r"stg scale must be a finite number"),
        ({"blocks": ()}, r"stg blocks must be one or more block indices >= 0, got \(\)"),
        ({"blocks": (-1,)}, r"stg blocks .* got \(-1,\)"),
        ({"blocks": (1.5,)}, r"stg blocks .* got \(1\.5,\)"),
        ({"blocks": (3, 3)}, r"must not repeat a block index, got \(3, 3\)"),
        (
            {"strategy": "layer_skip"},
            r"stg strategy must be one of .*transformer_block.*'layer_skip'",
        ),
        (
            {"start": 0.5, "stop": 0.5},
            r"stg window must satisfy 0 <= start < stop <= 1.*start=0\.5, stop=0\.5",
        ),
        ({"start": 0.8, "stop": 0.2}, r"start=0\.8, stop=0\.2"),
        ({"start": -0.1}, r"start=-0\.1"),
        ({"stop": 1.5}, r"stop=1\.5"),
    ],
)
def test_stg_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STG(**{"scale": 1.0, "blocks": (1,), **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": -1.0}, r"cfg scale must be >= 0, got -1\.0"),
        ({"scale": True}, r"cfg scale must be a finite number >= 0, got True"),
        ({"start": 0.3, "stop": 0.1}, r"cfg window must satisfy"),
    ],
)
def test_cfg_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CFG(**kwargs)


class _Blocks(nn.Module):
    """Just enough of a model for `validate_for`: blocks, one of which supports fewer strategies."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Identity() for _ in range(4)])
        self.blocks[2].perturbation_strategies = ("transformer_block",)


def test_validate_for_model():
    model = _Blocks()
    STG(1.0, blocks=(0, 3)).validate_for(model)
    with pytest.raises(ValueError, match=r"stg blocks \(1, 4\) out of range.*4 blocks.*0\.\.3"):
        STG(1.0, blocks=(4, 1)).validate_for(model)
    STG(1.0, blocks=(2,)).validate_for(model)
    with pytest.raises(
        ValueError,
        match=r"stg strategy 'attention_values' is not supported by block 2.*allowed: \('transformer_block',\)",
    ):
        STG(1.0, blocks=(1, 2), strategy="attention_values").validate_for(model)


def test_per_depth_strategies_move_with_their_blocks():
    term = STG(1.0, blocks=(5, 0), strategy=["attention_values", "transformer_block"])
    assert term.blocks == (0, 5) and term.first_block == 0
    assert term.strategy == term.strategies == ("transformer_block", "attention_values")
    assert term.perturbations == {
        0: STRATEGIES["transformer_block"],
        5: STRATEGIES["attention_values"],
    }
    assert STG(1.0, blocks=(2, 1), strategy="attention_skip").strategies == ("attention_skip",) * 2


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        (
            ("transformer_block",),
            r"one per block \(2 for blocks \(1, 2\)\), got \('transformer_block',\)",
        ),
        (("transformer_block", "skip"), r"stg strategy must be one of .*got 'skip'"),
        (3, r"one strategy name or one per block .* got 3"),
    ],
)
def test_per_depth_strategies_bad_input(strategy, match):
    with pytest.raises(ValueError, match=match):
        STG(1.0, blocks=(1, 2), strategy=strategy)


def test_per_depth_strategy_checked_against_each_block():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Identity(), nn.Identity()])
    model.blocks[1].perturbation_strategies = ("transformer_block",)
    STG(1.0, (0, 1), ("attention_values", "transformer_block")).validate_for(model)
    with pytest.raises(ValueError, match=r"'attention_values' is not supported by block 1"):
        STG(1.0, (0, 1), ("transformer_block", "attention_values")).validate_for(model)


def test_every_model_strategy_is_accepted():
    for strategy in STRATEGIES:
        assert STG(1.0, blocks=(0,), strategy=strategy).strategy == strategy


def test_window_convention_edges():
    t = torch.tensor([999, 750, 500, 499, 0])  # progress 0, 0.2497…, 0.4995…, 0.5005…, 1
    assert in_window(t, 0.0, 1.0, 1000).tolist() == [True] * 5
    assert in_window(t, 0.0, 0.5, 1000).tolist() == [True, True, True, False, False]
    assert in_window(t, 0.5, 1.0, 1000).tolist() == [False, False, False, True, True]
    # start inclusive, stop exclusive: the window (0, 0.25) ends just before t = 750 (0.2497… is in)
    edge = torch.tensor([999, 749.25, 749.0])  # progress 0, 0.25 exactly, 0.25025…
    assert in_window(edge, 0.0, 0.25, 1000).tolist() == [True, False, False]
    assert in_window(edge, 0.25, 1.0, 1000).tolist() == [False, True, True]
    # Two windows that meet never both hold; together they cover every timestep.
    every = torch.arange(1000)
    first, second = in_window(every, 0.0, 0.3, 1000), in_window(every, 0.3, 1.0, 1000)
    assert not (first & second).any() and (first | second).all()
    # Continuous timesteps beyond the training scale (flow matching's t = 1000) count as progress 0.
    assert in_window(torch.tensor([1000.0]), 0.0, 0.1, 1000).tolist() == [True]
