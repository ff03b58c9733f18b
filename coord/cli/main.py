"""The ``cllm`` command line: train, generate, eval, plot, serve, ctl; each command in its own module."""

import argparse
import sys
import traceback

from ..errors import OperationalError, RunFailed, UserError
from ..signals import leave
from . import ctl, evaluate, generate, plot, serve, train


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cllm", description="Train GPT-style language models on CPUs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (train, generate, evaluate, plot, serve, ctl):
        command.add_parser(commands)
    return parser


def entry() -> int:
    """The ``cllm`` program: ``main``, then an exit that does not wait for a pool thread stuck in a kernel."""
    return leave(main())


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UserError, RunFailed, OperationalError) as error:
        return report(error)
    except KeyboardInterrupt:
        print("cllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def as_rank(ranks, command) -> int:
    """``command()`` as one rank of an MPI launch, then the ranks' closing barrier. An error that ends the
    command on this rank ends every rank, after this rank's line, with its exit status: no rank is left
    waiting in a collective for one that is gone."""
    ranks.start()
    try:
        status = command()
    except (UserError, RunFailed, OperationalError) as error:
        ranks.fail(report(error))
    except KeyboardInterrupt:
        print("cllm: interrupted", file=sys.stderr)
        ranks.fail(130)
    except Exception:  # a bug: its traceback
        traceback.print_exc()
        ranks.fail(1)
    ranks.close()
    return status


def report(error: Exception) -> int:
    """One line on standard error for an error that ends a command; its exit status. A line break in the
    message (a path or a value given with one) is written as \\n, so that the line stays one."""
    text = str(error).replace("\r", "\\r").replace("\n", "\\n")
    if isinstance(error, UserError):
        print(f"cllm: error: {text}", file=sys.stderr)
        return 2
    print(f"cllm: {'run failed' if isinstance(error, RunFailed) else 'error'}: {text}", file=sys.stderr)
    return 1
