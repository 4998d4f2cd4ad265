"""The SLA options (`SLAConfig`) and the launch policy (`LaunchPolicy`) refuse bad values with
errors that name the field, and the policy crosses the registered op's schema unchanged."""

from __future__ import annotations

import pytest

from slatte.ops.sla import LaunchPolicy, SLAConfig
from slatte.ops.sla.config import block_counts


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(critical=0.0), "critical"),
        (dict(critical=1.5), "critical"),
        (dict(critical=0), "critical"),
        (dict(negligible=1.0), "negligible"),
        (dict(critical=0.95, negligible=0.10), r"critical 0.95 \+ negligible 0.1 = 1.05 > 1"),
        (dict(critical=0.5, negligible=0.6), "at most 1 - critical = 0.5"),
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
    "critical, negligible",
    [(0.05, 0.95), (0.4, 0.6), (1.0, 0.5), (0.9, 0.1), (2, 0.99), (0.5, 1000)],
)
def test_fractions_up_to_the_whole_row_and_counts_are_accepted(critical, negligible):
    # Fractions summing to exactly 1 (after float rounding); critical 1.0 is dense, its
    # negligible ignored; a count is capped per row at the call, so it is not summed.
    config = SLAConfig(critical=critical, negligible=negligible)
    n_crit, n_negl = block_counts(critical, negligible, 20)
    assert config.critical == critical and n_crit + n_negl <= 20
    if critical == 1.0:
        assert (n_crit, n_negl) == (20, 0)


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
