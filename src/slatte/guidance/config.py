"""Typed, validated guidance terms: classifier-free guidance (CFG) and skip guidance (STG).

What they compute is in `shared/specs/STG.md`; `guided_model_fn` turns them into a sampler's
`model_fn`.

Step window convention. Samplers call `model_fn(x_t, t)` with timesteps on the training scale
(`0 .. T-1`, `T = num_train_timesteps`, `t = T-1` the noisiest). A term's window is given as
fractions of that schedule, measured from the noisy end:

    progress(t) = 1 - t / (T - 1)          # 0 at the noisiest timestep, 1 at t = 0

and the term is active for a row when `start <= progress < stop`, with `stop = 1` including
`progress = 1`. So `(0, 1)` is every step, `(0, 0.5)` the noisier half of the schedule and
`(0.5, 1)` the cleaner half; two windows that meet at a point never both hold there. Continuous
timesteps (flow matching on the same 0..T scale) use the same formula, clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .options import (
    check_blocks,
    check_ratio,
    check_scale,
    check_schedule,
    check_window,
)
from .strategies import DEFAULT_STRATEGY, STRATEGIES, Strategy, get_strategy


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance `e_u + scale * (e_c - e_u)`.

    `scale = 1` (the default) means no CFG: the unconditional branch is not computed. `scale = 0`
    samples unconditionally. `start` / `stop`: the step window (module docstring); outside it the
    unconditional branch is not computed and the row gets the conditional prediction.
    """

    scale: float = 1.0
    start: float = 0.0
    stop: float = 1.0

    def __post_init__(self) -> None:
        check_scale("cfg scale", self.scale)
        check_window("cfg window", self.start, self.stop)

    @property
    def enabled(self) -> bool:
        return self.scale != 1.0


@dataclass(frozen=True)
class STG:
    """One skip-guidance term `scale * (e_c - e_p)`: one extra, perturbed branch.

    `blocks`: indices of the transformer blocks (counted from 0) perturbed together in this
    branch; `strategy`: the name of what a perturbed block does (one of
    `slatte.guidance.strategies.STRATEGIES`), or one name per block of `blocks` (in the order
    given) for different strategies at different depths, e.g. `blocks=(0, 5),
    strategy=("transformer_block", "attention_values")`; the branch still forks once, at its
    first block. `start` / `stop`: the step window (module docstring). Several terms give
    several branches, each with its own scale (for Latte, e.g. one spatial and one temporal
    block). A term with `scale = 0` is not computed.

    `adaptive = ratio` (default None: a fixed scale): the weight is chosen per sample and step
    so that the term's norm is `ratio` times the CFG term's (`slatte.guidance.adaptive`), shaped
    over the schedule by `adaptive_schedule` (`constant`, `decay`, `rise`); `scale` is then the
    largest weight allowed. An adaptive term needs CFG on every step of its window.
    """

    scale: float = 1.0
    blocks: tuple[int, ...] = ()
    strategy: str | tuple[str, ...] = DEFAULT_STRATEGY
    start: float = 0.0
    stop: float = 1.0
    adaptive: float | None = None
    adaptive_schedule: str = "constant"

    def __post_init__(self) -> None:
        check_scale("stg scale", self.scale)
        if self.adaptive is not None:
            check_ratio("stg adaptive ratio", self.adaptive)
        check_schedule("stg adaptive schedule", self.adaptive_schedule)
        blocks = check_blocks("stg blocks", self.blocks)
        strategy = self.strategy
        if isinstance(strategy, str):
            get_strategy(strategy)
            per_block = (strategy,) * len(blocks)
        else:
            per_block = per_block_strategies(strategy, blocks)
        # Sorted so that the first perturbed block (where the branch forks) is blocks[0]; the
        # per-block strategies move with their blocks.
        pairs = sorted(zip(blocks, per_block, strict=True))
        object.__setattr__(self, "blocks", tuple(block for block, _ in pairs))
        if not isinstance(strategy, str):
            object.__setattr__(self, "strategy", tuple(name for _, name in pairs))
        check_window("stg window", self.start, self.stop)

    @property
    def strategies(self) -> tuple[str, ...]:
        """The strategy name of each block of `blocks`, in the same order."""
        if isinstance(self.strategy, str):
            return (self.strategy,) * len(self.blocks)
        return self.strategy

    @property
    def first_block(self) -> int:
        return self.blocks[0]

    @property
    def perturbations(self) -> dict[int, Strategy]:
        """The `perturbations` argument of the model's `run_blocks` / `forward` for this branch."""
        return {
            block: STRATEGIES[name]
            for block, name in zip(self.blocks, self.strategies, strict=True)
        }

    @classmethod
    def from_json(cls, entry: dict) -> STG:
        """The term a `sampling.json` "stg" entry describes (keys as `to_json` writes them)."""
        return cls(
            scale=entry.get("scale", 1.0),
            blocks=entry["blocks"],
            strategy=entry.get("strategy", DEFAULT_STRATEGY),
            adaptive=entry.get("adaptive"),
            adaptive_schedule=entry.get("adaptive_schedule", "constant"),
        )

    def to_json(self) -> dict:
        """This term as a `sampling.json` "stg" entry (what `slatte sample` reads back)."""
        if (self.start, self.stop) != (0.0, 1.0):
            raise ValueError(
                f"sampling.json has no step window for stg terms; this term has ({self.start}, "
                f"{self.stop})"
            )
        strategy = self.strategy if isinstance(self.strategy, str) else list(self.strategy)
        entry = {"blocks": list(self.blocks), "scale": self.scale, "strategy": strategy}
        if self.adaptive is not None:
            entry |= {"adaptive": self.adaptive, "adaptive_schedule": self.adaptive_schedule}
        return entry

    def validate_for(self, model: nn.Module) -> None:
        """Raise a ValueError if this term does not fit `model` (block index, strategy).

        A block may list the strategies it supports in a `perturbation_strategies` attribute
        (e.g. a wrapped third-party block); without one it supports all of them.
        """
        num_blocks = len(model.blocks)
        if self.blocks[-1] >= num_blocks:
            raise ValueError(
                f"stg blocks {self.blocks} out of range: the model has {num_blocks} blocks, "
                f"allowed indices are 0..{num_blocks - 1}"
            )
        for index, strategy in zip(self.blocks, self.strategies, strict=True):
            supported = getattr(model.blocks[index], "perturbation_strategies", None)
            if supported is not None and strategy not in supported:
                raise ValueError(
                    f"stg strategy {strategy!r} is not supported by block {index} "
                    f"({type(model.blocks[index]).__name__}); allowed: {tuple(supported)}"
                )


def per_block_strategies(strategy: object, blocks: tuple[int, ...]) -> tuple[str, ...]:
    """`strategy` (a sequence of names) as one name per block, or a ValueError saying what was
    given."""
    names = tuple(strategy) if isinstance(strategy, list) else strategy
    if not isinstance(names, tuple) or len(names) != len(blocks):
        raise ValueError(
            f"stg strategy must be one strategy name or one per block ({len(blocks)} for "
            f"blocks {tuple(blocks)}), got {strategy!r}"
        )
    for name in names:
        get_strategy(name)
    return names


def window_progress(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """`1 - t / (T - 1)` clamped to [0, 1]: where each row's timestep lies in the schedule."""
    progress = 1.0 - t.to(torch.float64) / (num_train_timesteps - 1)
    return progress.clamp(0.0, 1.0)


def in_window(t: torch.Tensor, start: float, stop: float, num_train_timesteps: int) -> torch.Tensor:
    """Bool (B,): which rows of timesteps `t` (B,) lie in the window [start, stop)."""
    progress = window_progress(t, num_train_timesteps)
    inside = progress >= start
    if stop >= 1.0:
        return inside
    return inside & (progress < stop)
