"""Pieces of the command line several commands share."""

import argparse

from ..settings import COUNT, NON_NEGATIVE, POSITIVE, RATE, Rule, from_text

positive_int = from_text(POSITIVE)
count = from_text(COUNT)
fraction = from_text(NON_NEGATIVE)
positive_float = from_text(RATE)
probability_mass = from_text(Rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1))


def add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto: JSON lines unless standard output is a terminal (default: %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="(default: %(default)s)")


def text(value: str) -> str:
    """Text from the command line that is UTF-8 (bytes that are not arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(value[error.start]) - 0xDC00
        raise argparse.ArgumentTypeError(f"not UTF-8 text (byte {byte:#04x} at character {error.start}); "
                                         "give it as UTF-8") from None
    return value
