"""Structured logging: one JSON object per event, or readable lines on a terminal.

When standard output is the systemd journal (``JOURNAL_STREAM`` names its device and inode),
each line starts with its syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info,
``<7>`` debug, which journald strips and files the line under: ``journalctl -p warning``
finds the warnings. Anywhere else the lines are the payload alone.
"""

import logging
import os
import sys
from datetime import datetime, timezone

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SYSLOG_PRIORITY = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "info": 6, "debug": 7}


def iso_time(seconds: float) -> str:
    """A Unix time as ISO 8601 UTC, as the log's timestamps read: 2026-11-30T10:15:00Z."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def wants_json(log_format: str, stream=None) -> bool:
    stream = stream or sys.stdout
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


def is_journal(stream, environ=os.environ) -> bool:
    """Whether ``stream`` is connected to the journal: systemd sets JOURNAL_STREAM to the
    "device:inode" of the stream it gives a service, which a redirected stream no longer matches."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):  # no descriptor, closed, or not "N:N"
        return False


def with_priority(renderer):
    """``renderer`` with each line prefixed by its event's syslog priority, for the journal."""
    def render(logger, name, event):
        return f"<{SYSLOG_PRIORITY.get(event.get('level'), 6)}>{renderer(logger, name, event)}"
    return render


def configure(log_format: str = "auto", level: str = "info", stream=None, rank: int | None = None) -> bool:
    """Set up structlog for the process; returns True when events are JSON lines.

    JSON events carry an ISO 8601 UTC ``timestamp``, ``level`` and ``event``. In a run over
    MPI ranks every event carries ``rank`` too, and only rank 0 writes the run's own events;
    the others write their warnings and errors (everything at ``debug``) to standard error,
    so that rank 0's standard output stays one clean stream.
    """
    stream = stream or (sys.stderr if rank else sys.stdout)
    as_json = wants_json(log_format, stream)
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    if is_journal(stream):
        renderer = with_priority(renderer)
    threshold = LEVELS[level] if not rank or level == "debug" else max(LEVELS[level], logging.WARNING)
    add_rank = [] if rank is None else [lambda logger, name, event: {**event, "rank": rank}]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *add_rank,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return as_json
