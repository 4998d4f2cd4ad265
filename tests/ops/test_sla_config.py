"""The SLA options (`SLAConfig`) and the launch policy (`LaunchPolicy`) refuse bad values with
errors that name the field, and the policy crosses the registered op's schema unchanged."""

from __future__ import annotations

import pytest

from slatte.ops.sla import LaunchPolicy, SLAConfig


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(critical=0.0), "critical"),
        (dict(critical=1.5), "critical"),
        (dict(critical=0), "critical"),
        (dict(negligible=1.0), "negligible"),
        (dict(block_q=48), "block_q"),
        (dict(block_k=256), "block_k"),
        (dict(feature_map="tanh"), "feature_map"),
        (dict(linear_scope="some"), "linear_scope"),
    ],
)
def test_bad_sla_option_names_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        SLAConfig(**change)


@pytest.mark.parametrize(
    "change,match",
    [(dict(kernels="cuda"), "kernels must be one of"), (dict(tma=1), "tma must be a bool")],
)
def test_bad_policy_names_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        LaunchPolicy(**change)


def test_policy_round_trips_through_its_switches_and_is_frozen():
    policy = LaunchPolicy(kernels="triton", tma=False, tile_overrides={32: {"dq_stages": 1}})
    assert LaunchPolicy.from_switches("triton", policy.switches) == policy
    assert hash(LaunchPolicy.from_switches("triton", policy.switches)) == hash(policy)
    assert policy != LaunchPolicy(kernels="triton", tma=False)
    with pytest.raises(TypeError):
        policy.tile_overrides[32]["dq_stages"] = 2
