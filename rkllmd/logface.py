"""How the modules a runtime worker imports log: ``log = get_logger(name)``, then ``log.info(...)``.

The runtime packages, and what they import (rkllmd.generation, rkllmd.toolcalls, rkllmd.errors),
run in the daemon and in the runtime worker process (rkllmd.runtime._child). The worker must not
import structlog: it brings asyncio and ssl along, 11.7 MB of what would otherwise be a 16 MB
process. And its records belong in the daemon's log, written with the daemon's configuration.
So these modules log through this face, not structlog:

- in the daemon, each logger hands its calls to structlog's logger of the same name, taken at the
  first call (not at import), so the daemon's configuration, its context variables (a request's
  id) and ``structlog.testing.capture_logs`` all apply as if the module used structlog itself;
- in the worker, once its main has called :func:`send_to` (before it builds the runtime), every
  logger hands its records to that function instead, which sends them to the daemon.

The rest of the daemon (loop, bus, plugins) logs through structlog directly. Any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Takes one record: level ("debug" ... "critical"), logger name, event, its key/values.
Sender = Callable[[str, str, str, dict[str, Any]], None]

_sender: Sender | None = None  # set once, by the worker process's main thread, before any record


def send_to(sender: Sender) -> None:
    """From now on every logger of this process hands its records to ``sender``."""
    global _sender
    _sender = sender


def get_logger(name: str) -> Logger:
    """The logger ``name``: cheap, and safe to call at import (it imports nothing)."""
    return Logger(name)


class Logger:
    """structlog's logging calls, as the modules use them: ``log.warning("event", key=value)``."""

    __slots__ = ("_name", "_structlog")

    def __init__(self, name: str) -> None:
        self._name = name
        self._structlog: Any = None  # structlog's logger of this name, once a record needs it

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._log("critical", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        """An error with the traceback of the exception being handled."""
        if _sender is None:
            self._target().exception(event, **kw)
            return
        import traceback

        self._log("error", event, {**kw, "exception": traceback.format_exc()})

    def _log(self, level: str, event: str, kw: dict[str, Any]) -> None:
        sender = _sender
        if sender is not None:
            sender(level, self._name, event, kw)
        else:
            getattr(self._target(), level)(event, **kw)

    def _target(self) -> Any:
        if self._structlog is None:
            import structlog  # the daemon's: imported long before, so this is a lookup

            self._structlog = structlog.get_logger(self._name)
        return self._structlog
