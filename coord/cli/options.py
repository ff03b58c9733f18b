"""Pieces of the command line several commands share."""

import argparse

from ..build import python_version, version
from ..logs import LEVELS
from ..settings import COUNT, NON_NEGATIVE, POSITIVE, RATE, Rule, from_text

positive_int = from_text(POSITIVE)
count = from_text(COUNT)
fraction = from_text(NON_NEGATIVE)
positive_float = from_text(RATE)
probability_mass = from_text(Rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1))


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's line with its default, unless the help already says it or the
    option has none (a flag that is off, an option that is absent unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or "%(default)" in text or not action.option_strings:
            return text
        if action.default is None or action.default is False or action.default in ([], "", argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def version_line() -> str:
    return f"cllm {version()} (Python {python_version()})"


def add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto: JSON lines unless standard output is a terminal")
    p.add_argument("--log-level", choices=tuple(LEVELS), default="info",
                   help="the lowest level logged")


def text(value: str) -> str:
    """Text from the command line that is UTF-8 (bytes that are not arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(value[error.start]) - 0xDC00
        raise argparse.ArgumentTypeError(f"not UTF-8 text (byte {byte:#04x} at character {error.start}); "
                                         "give it as UTF-8") from None
    return value
