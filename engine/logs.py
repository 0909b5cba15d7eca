"""structlog set-up: JSON lines with flow, message id and correlation id where they are known.

Third-party code logs through the standard library (paramiko, aiohttp, nats-py) and its threads die with
plain tracebacks (paramiko's prefetch thread when a connection drops): both are bridged into the same
structured log, so ops' log pipeline never meets a line it cannot parse.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    bridge_stdlib(_LEVELS[level])


class StructlogHandler(logging.Handler):
    """Re-emits a standard-library log record as a structlog event (same level, logger name, traceback)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # a log record must never take down its caller
            self.handleError(record)


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """An exception nobody caught in a thread (default: a plain traceback on stderr)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else None
    structlog.get_logger("hub.threads").error("thread_failed", thread=name, error=f"{args.exc_type.__name__}: "
                                              f"{args.exc_value}"[:500],
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def bridge_stdlib(level: int) -> None:
    """Standard-library logging and uncaught thread exceptions into structlog (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, StructlogHandler) for h in root.handlers):
        root.addHandler(StructlogHandler())
    root.setLevel(max(level, logging.WARNING))  # third-party info chatter (a line per SSH login) stays out
    threading.excepthook = _thread_failed
