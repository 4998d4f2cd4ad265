"""Command-line flags generated from dataclass fields: help, choices and defaults in one place.

A field opts in with `field(..., metadata=flag("what it does", ...))`. `add_flags(parser, Cls)`
adds one `--name` per such field; its default is the dataclass's (shown in the help), and the
flag stays out of the parsed namespace unless it is given, so `given(args, Cls)` is exactly what
the user typed: a dict to lay over a default instance, a saved run's config or a model's stored
options (`dataclasses.replace`). Importing this module imports no torch, so `--help` is quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, fields, replace
from typing import Any, get_args, get_type_hints

_KEY = "slatte_flag"


def flag(
    help: str,
    *,
    name: str | None = None,
    choices: Sequence[Any] | None = None,
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    shown_default: str | None = None,
) -> dict[str, Any]:
    """Field metadata that makes a dataclass field a command-line flag, `--name` (default: the
    field's name with dashes). `shown_default`: what the help gives as the default where the
    command picks one other than the field's (e.g. a device)."""
    spec = {"help": help, "name": name, "choices": choices, "type": type, "metavar": metavar}
    return {_KEY: {**spec, "shown_default": shown_default}}


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    specs: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """Add the flags of `cls`'s fields: those with `flag` metadata, or, for a class that cannot
    carry it, those named in `specs` (field name -> `flag(...)`). `prefix` goes before each
    flag's name (`--sla-critical` for SLAConfig.critical with prefix "sla-")."""
    for f in fields(cls):
        spec = _spec(f, specs)
        if spec is None:
            continue
        name = _flag_name(f, spec, prefix)
        kind = spec["type"] or _value_type(get_type_hints(cls)[f.name])
        default = spec.get("shown_default") or _default(f)
        options: dict[str, Any] = {
            "dest": _dest(prefix, f.name),
            "default": argparse.SUPPRESS,
            "help": spec["help"]
            + ("" if default is None or default is False else f" (default: {default})"),
        }
        if kind is bool:
            parser.add_argument(name, action="store_true", **options)
        else:
            metavar = spec["metavar"] or (
                None if spec["choices"] else name[2:].upper().replace("-", "_")
            )
            parser.add_argument(
                name, type=kind, choices=spec["choices"], metavar=metavar, **options
            )


def given(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` whose flags (added by `add_flags`) were given, with their values."""
    return {
        f.name: getattr(args, _dest(prefix, f.name))
        for f in fields(cls)
        if hasattr(args, _dest(prefix, f.name))
    }


def flag_names(
    cls: type,
    names: Sequence[str],
    *,
    prefix: str = "",
    specs: Mapping[str, dict[str, Any]] | None = None,
) -> str:
    """The flags of these fields of `cls` as the user writes them, for error messages."""
    by_name = {f.name: f for f in fields(cls)}
    return ", ".join(
        _flag_name(by_name[n], _spec(by_name[n], specs) or {"name": None}, prefix) for n in names
    )


def _spec(f: Field, specs: Mapping[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    return f.metadata.get(_KEY) or (specs or {}).get(f.name, {}).get(_KEY)


def _flag_name(f: Field, spec: dict[str, Any], prefix: str) -> str:
    return "--" + prefix + (spec["name"] or f.name.replace("_", "-"))


def _value_type(hint: Any) -> Callable[[str], Any]:
    """The type a flag's text is read as: the field's type, `X | None` read as X."""
    kinds = [kind for kind in get_args(hint) if kind is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in (int, float, str, bool):
        raise TypeError(f"a flag of type {hint} needs flag(..., type=...) to say how to read it")
    return kinds[0]


def _dest(prefix: str, name: str) -> str:
    return prefix.replace("-", "_") + name


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


# --------------------------------------------------------------------------- SLA options
# SLAConfig (ops/) holds the defaults and the checks; these say what each option is for.
def _sla_specs() -> dict[str, dict[str, Any]]:
    from .ops.sla.config import BLOCK_SIZES, FEATURE_MAPS, LINEAR_SCOPES, PROJECTIONS

    return {
        "critical": flag("fraction of key blocks computed exactly", type=float),
        "negligible": flag("fraction of key blocks skipped", type=float),
        "block_q": flag("query block size", choices=BLOCK_SIZES),
        "block_k": flag("key block size", choices=BLOCK_SIZES),
        "feature_map": flag("feature map of the linear branch", choices=FEATURE_MAPS),
        "linear_scope": flag("key blocks the linear branch covers", choices=LINEAR_SCOPES),
        "projection": flag(
            "'learned' (trainable, zero at the start) or 'identity' (fixed; an ablation)",
            choices=PROJECTIONS,
        ),
    }


def add_sla_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--sla-*` flags of every command that runs SLA attention, one per SLAConfig field."""
    from .ops.sla.config import SLAConfig

    group = parser.add_argument_group(
        "SLA attention",
        "Each --sla-* flag replaces one field of the SLA options the model already has (the "
        "defaults shown are SLAConfig's, for a model without its own).",
    )
    add_flags(group, SLAConfig, prefix="sla-", specs=_sla_specs())


def sla_given(args: argparse.Namespace) -> dict[str, Any]:
    """The SLAConfig fields whose `--sla-*` flags were given."""
    from .ops.sla.config import SLAConfig

    return given(args, SLAConfig, prefix="sla-")


def sla_from_args(args: argparse.Namespace, stored: Any) -> Any:
    """The SLAConfig `stored` with the `--sla-*` flags that were given laid over it."""
    return replace(stored, **sla_given(args))


def attention_from_args(args: argparse.Namespace, backend: str, sla: Any) -> tuple[str, Any]:
    """A model's attention backend and SLAConfig with `--attention` and the `--sla-*` flags
    laid over them, field by field. SLA flags on a model that stays dense are an error."""
    from .ops.sla.config import SLAConfig

    changes = sla_given(args)
    backend = getattr(args, "attention", None) or backend
    if changes and backend == "sdpa":
        raise ValueError(
            f"{flag_names(SLAConfig, list(changes), prefix='sla-', specs=_sla_specs())} set SLA "
            "options, but the model's attention is dense ('sdpa'): add --attention sla (or "
            "sla_reference) to switch it to SLA"
        )
    return backend, sla_from_args(args, sla)
