"""Command-line options generated from settings dataclasses, so that a setting's default, type,
choices and one-line help are written once, on the field, and ``--help`` shows them all.

A settings class declares its fields with :func:`option`; :func:`add_options` gives a parser one
``--field-name`` option per field (a positional argument for a field without a default) and
:func:`from_args` builds the settings back from the parsed arguments. Fields are ``int``,
``float`` or ``str``, optionally ``| None``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

__all__ = ["option", "add_options", "from_args", "flag"]

Settings = TypeVar("Settings")


def option(default: Any, help: str, *, choices: Sequence[str] | None = None, shown: str | None = None) -> Any:
    """A dataclass field with a command-line help line.

    Args:
        default: the field's default; ``dataclasses.MISSING`` for a required field (a
            positional argument on the command line).
        help: what the setting does, in one line (the parser appends the default).
        choices: the accepted values, when there is a fixed set.
        shown: how ``--help`` states the default when its value alone would not say it
            (``None`` or ``""`` standing for a computed default).
    """
    metadata = {"help": help, "choices": choices, "shown": shown}
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The option spelling of a field name: ``lr_decay`` -> ``--lr-decay``."""
    return "--" + name.replace("_", "-")


def _value_type(hint: Any) -> type:
    """``int`` for ``int`` or ``int | None`` (likewise float, str)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint not in (int, float, str):
        raise TypeError(f"settings fields must be int, float or str (optionally | None), got {hint}")
    return hint


def add_options(parser: argparse.ArgumentParser, settings: type, skip: Collection[str] = ()) -> None:
    """Add one ``--name`` option per field of the dataclass ``settings`` (except ``skip``), with
    the field's type, default, choices and help, the help ending in ``(default: ...)``."""
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if field.name in skip:
            continue
        if "help" not in field.metadata:
            raise TypeError(f"{settings.__name__}.{field.name} has no help: declare it with option()")
        if field.default is dataclasses.MISSING:
            parser.add_argument(field.name, help=field.metadata["help"].replace("%", "%%"))
            continue
        shown = field.metadata["shown"]
        text = f"{field.metadata['help']} (default: {field.default if shown is None else shown})"
        parser.add_argument(
            flag(field.name),
            type=_value_type(hints[field.name]),
            default=field.default,
            choices=field.metadata["choices"],
            help=text.replace("%", "%%"),  # argparse %-formats help strings
        )


def from_args(settings: type[Settings], args: argparse.Namespace, **fixed: Any) -> Settings:
    """Build ``settings`` from parsed arguments (its fields' values), plus ``fixed`` fields."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings) if f.name not in fixed}
    return settings(**values, **fixed)
