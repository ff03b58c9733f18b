"""Structured logging: one JSON object per event, or readable lines on a terminal."""

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(log_format: str, stream=None) -> bool:
    stream = stream or sys.stdout
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


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
