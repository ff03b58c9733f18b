"""Errors a user can cause and fix, and the machine's."""


class UserError(Exception):
    """Bad input from the command line, a config, a data file, a checkpoint or a client.

    The message is one line that says what is wrong and what to do about it;
    the edge (CLI, socket, config loader) prints it and exits or replies, without a traceback.
    """


class RunFailed(Exception):
    """A run that cannot go on (non-finite losses in a row, a step that kept failing); one line says why."""


class OperationalError(Exception):
    """The machine, not the input, stopped a run: a full disk, a directory that cannot be written. One line
    says what and where; the same run goes on once the cause is fixed."""
