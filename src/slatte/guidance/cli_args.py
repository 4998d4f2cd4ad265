"""Command-line options for guidance, shared by every command that samples.

    --cfg-scale 4.0
    --stg-blocks 9 --stg-scale 1.0 --stg-strategy transformer_block --stg-window 0,1
    --stg-adaptive 0.5,decay
    --guidance-rescale 0.7

Each `--stg-blocks` starts one STG term (one extra, perturbed branch); give it several times for
several terms. Every other `--stg-*` option is given either once (it then applies to every term)
or exactly as many times as `--stg-blocks` (the i-th value belongs to the i-th term).

The flags are added and checked without torch (`options.py`, `strategies.py`), so a command's
`--help` and its argument errors answer at once; the STG terms are built after parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from .options import (
    SCHEDULE_NAMES,
    check_blocks,
    check_ratio,
    check_rescale,
    check_scale,
    check_schedule,
    check_window,
)
from .strategies import DEFAULT_STRATEGY, STRATEGY_NAMES, get_strategy, strategies_help

if TYPE_CHECKING:
    from .config import STG

_PER_TERM = ("stg_scale", "stg_strategy", "stg_window", "stg_adaptive")


def add_guidance_arguments(parser: argparse.ArgumentParser, *, from_model: bool = False) -> None:
    """Add the CFG / STG options to `parser` (as an argument group "guidance").

    `from_model`: --cfg-scale and --guidance-rescale default to None, for the caller to fill
    from the model's recommended options (`slatte sample` and a sampling.json), else 1 and 0.
    """
    where = "the model's sampling.json, else " if from_model else ""
    group = parser.add_argument_group(
        "guidance",
        "Classifier-free guidance (CFG) and spatio-temporal skip guidance (STG). The guided "
        "prediction is e_u + cfg_scale (e_c - e_u) + sum over STG terms of "
        "stg_scale (e_c - e_p), where e_p is the conditional prediction of the model with the "
        "term's blocks perturbed. Windows are fractions of the sampling schedule from the noisy "
        "end: '0,1' is every step, '0,0.5' the noisier half.",
    )
    group.add_argument(
        "--cfg-scale",
        type=_scale("--cfg-scale"),
        default=None if from_model else 1.0,
        metavar="W",
        help="CFG scale; 1 turns CFG off (no unconditional branch is computed), 0 samples "
        f"unconditionally (default: {where}1).",
    )
    group.add_argument(
        "--stg-blocks",
        type=_argument_type(
            "--stg-blocks", "block indices separated by commas (e.g. 9 or 4,5)", _ints, check_blocks
        ),
        action="append",
        metavar="I[,J...]",
        help="add an STG term perturbing these transformer blocks (indices from 0; several "
        "blocks are perturbed together in one branch). Repeat for several terms, each its own "
        "extra branch. In Latte's alternating pattern even indices are spatial and odd ones "
        "temporal blocks; a full-attention model has only full blocks. A block in the middle "
        "of the network is a common start; the branch forks at its first block, so a later "
        "block costs less (block L of N adds (N - L)/N of one conditional pass).",
    )
    group.add_argument(
        "--stg-scale",
        type=_scale("--stg-scale"),
        action="append",
        metavar="W",
        help="STG scale of each term (default: 1.0); once for all terms or once per --stg-blocks.",
    )
    group.add_argument(
        "--stg-strategy",
        type=_strategy,
        action="append",
        metavar="NAME[,NAME...]",
        help=f"what a perturbed block does (default: {DEFAULT_STRATEGY}); one of "
        f"{', '.join(STRATEGY_NAMES)}, or one per block of the term's --stg-blocks for "
        "different strategies at different depths (e.g. --stg-blocks 0,5 --stg-strategy "
        "transformer_block,attention_values: one branch, forked at block 0). "
        f"{strategies_help()}. Once for all terms or once per --stg-blocks.",
    )
    group.add_argument(
        "--stg-window",
        type=_window("--stg-window"),
        action="append",
        metavar="START,STOP",
        help="apply an STG term only on this part of the schedule (default: 0,1); outside it "
        "the term's branch is not computed. Once for all terms or once per --stg-blocks.",
    )
    group.add_argument(
        "--stg-adaptive",
        type=_adaptive,
        action="append",
        metavar="RATIO[,SCHEDULE]",
        help="adaptive STG scale: per sample and step, the term's weight keeps its norm at RATIO "
        "times the CFG term's norm, at most --stg-scale (which then caps it); SCHEDULE shapes "
        f"RATIO over the steps: {', '.join(SCHEDULE_NAMES)} (default: constant). Needs CFG on "
        "the term's window. Once for all terms or once per --stg-blocks.",
    )
    group.add_argument(
        "--guidance-rescale",
        "--stg-rescale",
        dest="guidance_rescale",
        type=_argument_type("--guidance-rescale", "a number in [0, 1]", float, check_rescale),
        default=None if from_model else 0.0,
        metavar="R",
        help="rescale the guided prediction towards the conditional prediction's standard "
        "deviation, per sample: factor r * std(e_c) / std(e) + 1 - r; 0 = off, 0.7 is the "
        f"usual value against over-saturation at large scales (default: {where}0).",
    )


def guidance_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> tuple[float, tuple[STG, ...], float]:
    """`(cfg_scale, stg_terms, rescale)` from options added by `add_guidance_arguments`, as
    `guided_model_fn(model, cfg_scale=..., stg=..., rescale=...)` takes them.

    Inconsistent options raise a ValueError naming the flag, or, if `parser` is given, end
    through `parser.error` as argparse does for its own errors.
    """
    try:
        return guidance_from_options(vars(args))
    except ValueError as error:
        if parser is None:
            raise
        parser.error(str(error))


def guidance_from_options(options: Mapping[str, Any]) -> tuple[float, tuple[STG, ...], float]:
    """`guidance_from_args` on a mapping of the same option names (e.g. the flags with a
    model's recommended options filled in); inconsistent options raise a ValueError."""
    from .config import STG

    blocks = options["stg_blocks"] or []
    per_term = {name: _spread(options, name, len(blocks)) for name in _PER_TERM}
    terms = []
    for i, term_blocks in enumerate(blocks):
        scale = per_term["stg_scale"][i] if per_term["stg_scale"] else 1.0
        strategy = per_term["stg_strategy"][i] if per_term["stg_strategy"] else DEFAULT_STRATEGY
        start, stop = per_term["stg_window"][i] if per_term["stg_window"] else (0.0, 1.0)
        ratio, schedule = (
            per_term["stg_adaptive"][i] if per_term["stg_adaptive"] else (None, "constant")
        )
        terms.append(STG(scale, term_blocks, strategy, start, stop, ratio, schedule))
    return options["cfg_scale"], tuple(terms), options["guidance_rescale"]


def _spread(options: Mapping[str, Any], name: str, num_terms: int) -> list:
    """The values of a per-term option, one per term ([] when the option was not given)."""
    values = options[name] or []
    flag = "--" + name.replace("_", "-")
    if values and num_terms == 0:
        raise ValueError(f"{flag} was given without --stg-blocks; each STG term needs its blocks")
    if len(values) in (0, num_terms):
        return values
    if len(values) == 1:
        return values * num_terms
    raise ValueError(
        f"{flag} was given {len(values)} times for {num_terms} STG terms (--stg-blocks); "
        "give it once for all terms or once per term"
    )


def _argument_type(flag: str, what: str, convert: Callable[[str], Any], check: Callable[..., Any]):
    """An argparse `type=`: `convert` the text, then `check(flag, value)`; errors name the flag."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {what}, got {text!r}") from None
        try:
            check(flag, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    return parse


def _strategy(text: str) -> str | tuple[str, ...]:
    """One strategy name, or a comma list of them (one per block of the term)."""
    names = tuple(text.split(","))
    for name in names:
        try:
            get_strategy(name, what="--stg-strategy")
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return names[0] if len(names) == 1 else names


def _adaptive(text: str) -> tuple[float, str]:
    """`RATIO[,SCHEDULE]` as (ratio, schedule)."""
    ratio_text, _, schedule = text.partition(",")
    try:
        ratio = float(ratio_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stg-adaptive must be RATIO[,SCHEDULE] with RATIO a number > 0, got {text!r}"
        ) from None
    schedule = schedule or "constant"
    try:
        check_ratio("--stg-adaptive ratio", ratio)
        check_schedule("--stg-adaptive schedule", schedule)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return ratio, schedule


def _pair(text: str) -> tuple[float, float]:
    start, stop = (float(part) for part in text.split(","))
    return start, stop


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


_scale = partial(_argument_type, what="a number >= 0", convert=float, check=check_scale)
_window = partial(
    _argument_type,
    what="START,STOP (fractions of the schedule)",
    convert=_pair,
    check=lambda flag, pair: check_window(flag, *pair),
)
