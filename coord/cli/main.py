"""The ``cllm`` command line: train, generate, eval, plot, serve, ctl; each command in its own module."""

import argparse
import sys
import traceback

from ..distributed.supervise import launch_to_supervise, supervise
from ..errors import OperationalError, RunFailed, UserError
from ..logs import is_journal
from ..signals import leave
from .options import DefaultsFormatter, version_line


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2, and shows every
    option's default in its help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=DefaultsFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from . import ctl, evaluate, generate, plot, serve, train  # here: a rank's supervisor never needs them

    parser = Parser(prog="cllm", description="Train GPT-style language models on CPUs.")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (train, generate, evaluate, plot, serve, ctl):
        command.add_parser(commands)
    return parser


def entry() -> int:
    """The ``cllm`` program: ``main``, then an exit that does not wait for a pool thread stuck in a kernel.
    Started by mpiexec, this process supervises the rank, which runs ``main`` in a child process."""
    launch = launch_to_supervise()
    if launch is not None:
        return supervise(launch, sys.argv[1:], say)
    return leave(main())


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UserError, RunFailed, OperationalError) as error:
        return report(error)
    except KeyboardInterrupt:
        say("cllm: interrupted", 6)
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
        say("cllm: interrupted", 6)
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
        say(f"cllm: error: {text}")
        return 2
    say(f"cllm: {'run failed' if isinstance(error, RunFailed) else 'error'}: {text}")
    return 1


def say(line: str, priority: int = 3) -> None:
    """A line on standard error, with its syslog priority when standard error is the journal."""
    print(f"<{priority}>{line}" if is_journal(sys.stderr) else line, file=sys.stderr)
