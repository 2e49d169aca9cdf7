"""Command-line options generated from a config dataclass, so each option is declared once.

A training command's config is a dataclass; each field is an option: `--field-name`, its type and
default from the field, its help text, group, bounds and flag spelling from `option(...)`. The
parsed namespace turns back into the dataclass with `from_args`, which also checks the bounds, and
the checkpoint stores `asdict(config)`. service/__main__.py builds its parser from Settings the
same way.

Field types understood: bool (a switch; `flag="--no-x"` for one that turns a True default off),
int, float, str, Path, `X | None`, `tuple[X, ...]` (one or more values), a nested config
dataclass (its options join this parser), and anything with an explicit `parse` function.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}
_MISSING = dataclasses.MISSING


class OptionError(ValueError):
    """An option value outside its bounds; the message names the option."""


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    group: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field that is also a command-line option (no default: a required option).

    minimum: `from_args` refuses smaller values; cli=False: set by the program, not the user.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "minimum": minimum,
        "group": group,
        "metavar": metavar,
        "cli": cli,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def add_options(
    parser: argparse.ArgumentParser, config_class: type, skip: Sequence[str] = ()
) -> None:
    """One option per field of `config_class` (nested config dataclasses included)."""
    hints = typing.get_type_hints(config_class)
    groups: dict[str | None, Any] = {None: parser}
    for f in dataclasses.fields(config_class):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        annotation = _unwrap_optional(hints[f.name])
        if _is_config(annotation):
            add_options(parser, annotation, skip)
            continue
        group_name = f.metadata.get("group")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        _add_field(groups[group_name], f, annotation)


def _add_field(parser: Any, f: dataclasses.Field[Any], annotation: Any) -> None:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    required = f.default is _MISSING and f.default_factory is _MISSING
    default = None if required else _default_of(f)
    # argparse %-formats help texts: a literal % must be doubled.
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help", "").replace("%", "%%")}
    if annotation is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        parser.add_argument(flag, **kwargs)
        return
    if meta.get("parse") is None and typing.get_origin(annotation) is tuple:
        kwargs["nargs"] = "+"
        annotation = typing.get_args(annotation)[0]
    kwargs["type"] = meta.get("parse") or _SCALARS.get(annotation, str)
    if meta.get("choices") is not None:
        kwargs["choices"] = list(meta["choices"])
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        if default not in (None, (), {}):
            kwargs["help"] = f"{kwargs['help']} (default: %(default)s)".strip()
    parser.add_argument(flag, **kwargs)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return f.default


def from_args(config_class: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The config from parsed options (fields the parser did not define keep their default);
    values below an option's `minimum` raise OptionError naming the option."""
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):  # type: ignore[arg-type]
        annotation = _unwrap_optional(hints[f.name])
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif _is_config(annotation):
            values[f.name] = from_args(annotation, args)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, list):
                value = tuple(value)
            minimum = f.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                raise OptionError(f"{flag} must be at least {minimum}, got {value}")
            values[f.name] = value
    return config_class(**values)
