"""The options of SLA attention, as one frozen, validated value that model configs carry."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

FEATURE_MAPS = ("softmax", "elu", "relu")
LINEAR_SCOPES = ("marginal", "noncritical", "all")
BLOCK_SIZES = (16, 32, 64, 128)
PROJECTIONS = ("learned", "identity")


@dataclass(frozen=True)
class SLAConfig:
    """How SLA splits attention (see `shared/specs/SLA.md`).

    `critical` / `negligible`: a float is a fraction of the key blocks of each query-block row,
    an int a count of blocks (capped at the number of key blocks). As fractions they share one
    row, so critical + negligible may not exceed 1, except that critical 1.0 makes every block
    critical (dense attention) and negligible is then ignored. Counts are capped per row instead
    (the row's length is known only at the call).
    `projection`: "learned" (the zero-initialised, trainable projection of the linear branch) or
    "identity" (the linear branch added as it is, fixed: the paper's sparse + linear ablation).
    """

    critical: float | int = 0.05
    negligible: float | int = 0.10
    block_q: int = 64
    block_k: int = 64
    feature_map: str = "softmax"
    linear_scope: str = "marginal"
    projection: str = "learned"

    def __post_init__(self) -> None:
        validate_fractions(self.critical, self.negligible)
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or value not in BLOCK_SIZES:
                raise ValueError(f"{name} must be one of {BLOCK_SIZES}, got {value!r}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.linear_scope not in LINEAR_SCOPES:
            raise ValueError(
                f"linear_scope must be one of {LINEAR_SCOPES}, got {self.linear_scope!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SLAConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown SLA option(s) {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)


def validate_fractions(critical: float | int, negligible: float | int) -> None:
    """Raise a ValueError naming the argument when `critical` or `negligible` is out of range,
    or when, both fractions, they add up to more than the whole row (`SLAConfig`)."""
    if isinstance(critical, bool) or not isinstance(critical, (int, float)):
        raise ValueError(f"critical must be a float in (0, 1] or an int >= 1, got {critical!r}")
    if isinstance(critical, int):
        if critical < 1:
            raise ValueError(f"critical as a block count must be >= 1, got {critical}")
    elif not 0.0 < critical <= 1.0:
        raise ValueError(f"critical as a fraction must lie in (0, 1], got {critical}")
    if isinstance(negligible, bool) or not isinstance(negligible, (int, float)):
        raise ValueError(f"negligible must be a float in [0, 1) or an int >= 0, got {negligible!r}")
    if isinstance(negligible, int):
        if negligible < 0:
            raise ValueError(f"negligible as a block count must be >= 0, got {negligible}")
    elif not 0.0 <= negligible < 1.0:
        raise ValueError(f"negligible as a fraction must lie in [0, 1), got {negligible}")
    # A tolerance so that fractions summing to 1 in decimal (0.05 + 0.95) are not refused for
    # their binary rounding.
    both_fractions = isinstance(critical, float) and isinstance(negligible, float)
    if both_fractions and critical < 1.0 and critical + negligible > 1.0 + 1e-9:
        raise ValueError(
            f"critical {critical:g} + negligible {negligible:g} = {critical + negligible:g} > 1: "
            f"at most 1 - critical = {1.0 - critical:g} of the key blocks can be negligible "
            "(critical 1.0 means dense attention, negligible then ignored)"
        )


def block_counts(critical: float | int, negligible: float | int, n_blocks: int) -> tuple[int, int]:
    """The number of critical and negligible key blocks per query-block row (spec section 1).

    A float is a fraction of `n_blocks` (critical rounded half up, at least 1; negligible rounded
    down), an int a count; both capped so that they never overlap.
    """
    validate_fractions(critical, negligible)
    if isinstance(critical, int):
        n_crit = min(critical, n_blocks)
    else:
        n_crit = min(max(1, math.floor(critical * n_blocks + 0.5)), n_blocks)
    n_negl = negligible if isinstance(negligible, int) else math.floor(negligible * n_blocks)
    return n_crit, min(n_negl, n_blocks - n_crit)
