"""Declared settings: a dataclass field that knows its rule, its help and its public name.

A setting is declared once, where it is used (``Schedule.lr``, ``ModelConfig.seq_len``), with
``setting(default, RULE, help)``. Every edge reads the declarations: the command line builds its
options from them (type, choices, help with the default), the TOML loaders check keys against
them, checkpoints store them by name. So a default, a range or a list of choices lives in one
place, and an edge only says how it spells a name in its error messages.
"""

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a value must be: a kind (bool, int, float, str, Path, or tuple for a list of strings), a test
    of its range, described for messages, and the choices when the value is one of a list."""

    kind: type
    allowed: str
    test: Callable = lambda value: True
    choices: tuple = ()


def one_of(choices) -> Rule:
    choices = tuple(choices)
    return Rule(str, "one of " + ", ".join(f'"{c}"' for c in choices), lambda v: v in choices, choices)


def at_most(limit: int, low: int = 1) -> Rule:
    return Rule(int, f"an integer from {low} to {limit}", lambda v: low <= v <= limit)


POSITIVE = Rule(int, "a positive integer", lambda v: v > 0)
COUNT = Rule(int, "an integer >= 0", lambda v: v >= 0)
SECONDS = Rule(float, "a number of seconds > 0", lambda v: v > 0)
RATE = Rule(float, "a finite number > 0", lambda v: v > 0)
NON_NEGATIVE = Rule(float, "a finite number >= 0", lambda v: v >= 0)
BETA = Rule(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
FLAG = Rule(bool, "true or false")
NAME = Rule(str, "a string")
PATH = Rule(Path, "a path (a string; empty for the default)")
GLOBS = Rule(tuple, "a list of strings")


def setting(default, rule: Rule, help: str, name: str = ""):
    """A dataclass field declared as a setting; ``name`` is its public name when not the field's."""
    return field(default=default, metadata={"rule": rule, "help": help, "name": name})


@dataclass(frozen=True)
class Declared:
    """One setting found in a (nested) configuration dataclass."""

    name: str  # the public name: TOML key, command-line option with dashes, checkpoint key
    path: tuple  # field names from the root dataclass down to this field
    rule: Rule
    help: str
    default: object


def declared(cls, path: tuple = ()) -> list:
    """Every setting in dataclass ``cls`` and the dataclasses it holds, depth first in field order."""
    found = []
    for f in dataclasses.fields(cls):
        if "rule" in f.metadata:
            found.append(Declared(f.metadata["name"] or f.name, path + (f.name,), f.metadata["rule"],
                                  f.metadata["help"], f.default))
        elif dataclasses.is_dataclass(f.default):  # a nested configuration, e.g. RunConfig.schedule
            found += declared(type(f.default), path + (f.name,))
    return found


def get(config, path: tuple):
    for part in path:
        config = getattr(config, part)
    return config


def replaced(config, values: dict, settings: list):
    """``config`` with each setting named in ``values`` set (values already checked and converted)."""
    by_name = {s.name: s for s in settings}
    nested = {}
    for name, value in values.items():
        nested[by_name[name].path] = value

    def rebuild(obj, prefix: tuple):
        changes = {}
        for f in dataclasses.fields(obj):
            here = prefix + (f.name,)
            if here in nested:
                changes[f.name] = nested[here]
            elif any(p[:len(here)] == here for p in nested):
                changes[f.name] = rebuild(getattr(obj, f.name), here)
        return dataclasses.replace(obj, **changes) if changes else obj

    return rebuild(config, ())


# ----- values as a TOML file or a JSON record gives them -----

def has_kind(value, kind: type) -> bool:
    """Whether a parsed TOML or JSON value is of ``kind``: no bool for a number, no float for an int."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and abs(value) <= sys.float_info.max  # not inf, not nan
    if kind is tuple:
        return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
    if kind is Path:
        return isinstance(value, str)
    return isinstance(value, kind)


def convert(s: Declared, value, where: str):
    """A parsed value checked against its setting's rule; paths stay strings (the caller anchors them)."""
    rule = s.rule
    if not has_kind(value, rule.kind) or not rule.test(value):
        raise UserError(f"{where} must be {rule.allowed}, got {show(value)}")
    if rule.kind is float:
        return float(value)
    if rule.kind is tuple:
        return tuple(value)
    return value


def show(value) -> str:
    """A value as TOML or JSON spells it, for error messages."""
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)  # dates and times


def printable(text) -> str:
    """A name or path given by a user, for a one-line message: as it is, or quoted (JSON) when it holds
    line breaks or other characters that do not print."""
    text = str(text)
    return text if text.isprintable() else json.dumps(text)


def plain(value):
    """A setting's value as JSON keeps it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ----- values as a command line gives them -----

def from_text(rule: Rule):
    """An argparse ``type`` that parses and checks text against ``rule`` (ArgumentTypeError: one line)."""
    import argparse

    def parse(text: str):
        if rule.kind is Path:
            return Path(text)
        if rule.kind in (int, float):
            try:
                value = rule.kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not {'a whole number' if rule.kind is int else 'a number'}") from None
            if rule.kind is float and not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"{text} must be {rule.allowed}")
        else:
            value = text
        if not rule.test(value):
            raise argparse.ArgumentTypeError(f"{text} must be {rule.allowed}")
        return value

    return parse
