"""structlog set-up: readable console lines on a terminal, JSON lines otherwise (journald, files).

structlog loggers and stdlib loggers (paho, llama_cpp) all end in stderr with the same processors,
so every line has the same shape and the logger name says where it came from. rkllmd's own lines
do not go through stdlib logging: a request logs two lines, and a LogRecord, its handler and
formatter cost more than the rest of the line (19 µs a line here against 9; an INFO line per
request is about a sixth of what a request costs the daemon beyond its tokens).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Lines:
    """stderr for structlog's lines: one write and a flush each, under one lock for every logger.

    No line is logged from a signal handler (rkllmd.signals acts on signals on a thread of its
    own), so a write is never entered again on the thread in it, and a plain lock does."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self._lock = stream, threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(f"{line}\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr gone (a closed pipe or file): as stdlib logging,
                pass  # a line that cannot be written never takes its thread down


class _Logger:
    """What a structlog logger hands its rendered line to: with a ``name`` for add_logger_name."""

    def __init__(self, name: str, out: _Lines) -> None:
        self.name, self._out = name, out

    def msg(self, message: str) -> None:
        self._out.write(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure(level: str = "info", fmt: Literal["auto", "console", "json"] = "auto") -> None:
    """Configure structlog and stdlib logging, writing to stderr."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    out = _Lines(sys.stderr)

    def factory(*args: Any) -> _Logger:
        return _Logger(str(args[0]) if args else "rkllmd", out)

    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        # Below the level a call returns at once; the level is the configured one for good.
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        # Not cached: structlog.testing.capture_logs must still see every logger.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # paho logs every packet at DEBUG; keep it at INFO unless asked.
    logging.getLogger("paho").setLevel(max(_LEVELS[level], logging.INFO))
