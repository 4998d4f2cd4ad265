"""STG perturbation strategies: what a perturbed transformer block does (spec:
`shared/specs/STG.md`, "Perturbations"). Their names and behaviour live here only; slatte's
`LatteBlock`, the diffusers STG hooks, the STG config and the CLI help read this table, so a new
strategy is one entry in `STRATEGIES`.

A strategy acts at one of the two places every block that supports STG offers:
- the whole block (`skips_block`): the block returns its input unchanged;
- its self-attention sub-layer (`attention_output`): the sub-layer's output is replaced by one
  computed from the sub-layer's input x (the normalised, modulated hidden states) and, where the
  strategy needs it, `identity_map(x)`: the attention layer's output under the identity
  attention map, i.e. its output projection of its value projection, `out_proj(V)`.
This module imports nothing from the models: the model's blocks and the diffusers hooks receive
`Strategy` objects and call these two operations. Nor does it import torch (the operations use
tensor methods only), so the command line's help and flag checks read the table at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IdentityMap = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Strategy:
    """One perturbation: `name`, a one-line `summary` of what the perturbed block does, and
    either `skips_block` or `replace_attention(x, identity_map) -> output` of its
    self-attention sub-layer."""

    name: str
    summary: str
    skips_block: bool = False
    replace_attention: Callable[[torch.Tensor, IdentityMap], torch.Tensor] | None = None

    def attention_output(self, x: torch.Tensor, identity_map: IdentityMap) -> torch.Tensor:
        """What the perturbed self-attention sub-layer outputs for its input x (..., D)."""
        if self.replace_attention is None:
            raise ValueError(f"strategy {self.name!r} skips the whole block, not its attention")
        return self.replace_attention(x, identity_map)


def _no_attention(x: torch.Tensor, identity_map: IdentityMap) -> torch.Tensor:
    # A zero output makes the sub-layer's residual add a no-op.
    return x.new_zeros(x.shape)


def _attention_input(x: torch.Tensor, identity_map: IdentityMap) -> torch.Tensor:
    return x


def _values(x: torch.Tensor, identity_map: IdentityMap) -> torch.Tensor:
    return identity_map(x)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "transformer_block",
            "the block returns its input unchanged (attention, cross-attention, feed-forward "
            "and norms all skipped; STG-R)",
            skips_block=True,
        ),
        Strategy(
            "attention_block",
            "the block adds nothing from its self-attention (that residual add is skipped); the "
            "rest runs",
            replace_attention=_no_attention,
        ),
        Strategy(
            "attention_skip",
            "self-attention outputs its own (normalised) input",
            replace_attention=_attention_input,
        ),
        Strategy(
            "attention_values",
            "self-attention uses the identity as attention map, so it outputs out_proj(V) (STG-A)",
            replace_attention=_values,
        ),
    )
}
STRATEGY_NAMES = tuple(STRATEGIES)
DEFAULT_STRATEGY = "transformer_block"


def get_strategy(name: str, *, what: str = "stg strategy") -> Strategy:
    """The strategy called `name`, or a ValueError saying `what` was given and what is allowed."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"{what} must be one of {STRATEGY_NAMES}, got {name!r}")
    return STRATEGIES[name]


def strategies_help() -> str:
    """Every strategy with its summary, for help texts."""
    return "; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values())
