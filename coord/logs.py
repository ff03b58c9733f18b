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


def configure(log_format: str = "auto", level: str = "info", stream=None) -> bool:
    """Set up structlog for the process; returns True when events are JSON lines.

    JSON events carry an ISO 8601 UTC ``timestamp``, ``level`` and ``event``.
    """
    stream = stream or sys.stdout
    as_json = wants_json(log_format, stream)
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return as_json
