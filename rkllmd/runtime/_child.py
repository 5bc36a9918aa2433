"""The runtime worker process: ``python -m rkllmd.runtime._child CMD_FD EVENT_FD CTL_FD``.

rkllmd.runtime.worker starts it with three inherited pipe ends and talks to it in the frames of
rkllmd.runtime.pipe: the opening command builds the runtime, then each call runs one method of
it that the ``Runtime`` interface marks served (rkllmd.runtime.base.served), whatever its name:
this module names none. CTL_FD carries one byte per abort; its end of file means the parent is
gone, and the worker exits at once (as it does when a write to EVENT_FD finds the parent gone).

What the worker imports is only what its runtime needs: no multiprocessing (so no resource
tracker process), no MQTT, no configuration loader, no pydantic (the model's settings come as
:class:`rkllmd.runtime.base.Table` s, and ``open_runtime`` from the runtime package's
``__init__``, which imports no settings model), no structlog (it brings asyncio and ssl along,
some 11 MB): the runtime modules log through rkllmd.logface, which hands each record to
:class:`LogSender` here, and the parent logs it with its own configuration.

Threads here: *main* serves the commands and runs the runtime, whose token callback hands each
token to :class:`~rkllmd.runtime.pipe.Outbox` (one non-blocking write, or kept when the pipe is
full); the *sender* thread writes what was kept as one ``K_TOKENS`` frame, so a runtime that
outpaces the parent sends many tokens per frame and never waits for it; the *control* thread
turns abort bytes into ``abort()`` calls. The parent reads all frames a read brings at once, so
it batches too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
from typing import Any

from rkllmd import logface
from rkllmd.errors import RkllmdError, RuntimeFailure
from rkllmd.runtime.base import Runtime, served_methods
from rkllmd.runtime.pipe import CLOSE, K_LOG, Arg, FrameReader, Outbox

# Log levels as numbers, so the worker filters before it sends anything.
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

log = logface.get_logger("rkllmd.worker")


def _plain(value: Any) -> Any:
    """A log value the parent can unpickle without our classes: scalars as they are, else text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class LogSender:
    """Where rkllmd.logface hands the worker's records (any thread): those below ``min`` are
    dropped here, the rest go to the parent as ``K_LOG`` frames, with ``context`` added."""

    def __init__(self, out: Outbox | None, level: str) -> None:
        self.out, self.min = out, LEVELS.get(level, 20)
        self.context: dict[str, Any] = {}

    def __call__(self, level: str, name: str, event: str, kw: dict[str, Any]) -> None:
        if LEVELS.get(level, 20) < self.min or self.out is None:
            return
        record = (level, name, str(event), _plain({**self.context, **kw}))
        with contextlib.suppress(OSError):  # the parent is gone; the control thread ends the process
            self.out.send(K_LOG, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))


def send_logs(out: Outbox | None, level: str) -> LogSender:
    """Send this process's log records to the parent (``out``; None drops them)."""
    sender = LogSender(out, level)
    logface.send_to(sender)
    return sender


# --- the worker's main ------------------------------------------------------------------------


def _error_msg(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, RkllmdError):
        safe = {k: v for k, v in exc.data.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return ("error", type(exc).__name__, exc.message, safe)
    return ("error", "RuntimeFailure", f"{type(exc).__name__}: {exc}", {})


def main(argv: list[str]) -> int:
    cmd_fd, event_fd, ctl_fd = (int(a) for a in argv[:3])
    # The parent handles SIGINT/SIGTERM and tells us to close; a terminal's Ctrl-C reaches the
    # whole process group, so ignore it here instead of dying mid-request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = Outbox(event_fd)
    commands = FrameReader(cmd_fd)
    first = commands.read()
    if not first:
        return 0
    # Records go to the parent from the start: unpickling the opening command imports the
    # runtime's package, whose modules may log as they load.
    logs = send_logs(out, "info")
    open_runtime, name, cfg, settings, level = pickle.loads(first[0][1])
    logs.min = LEVELS.get(level, 20)
    logs.context["worker"] = name
    rt = open_runtime(name, cfg, settings)
    served = served_methods(type(rt))
    try:
        rt.open()
    except BaseException as exc:
        out.reply(_error_msg(exc))
        rt.close()
        return 0
    out.reply(("ok", {"context_length": rt.context_length, "describe": rt.describe()}))

    def control() -> None:
        while True:
            try:
                data = os.read(ctl_fd, 64)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:  # the parent died (or closed us without a word): nothing to serve
                os._exit(0)
            rt.abort()

    threading.Thread(target=control, name="worker-control", daemon=True).start()
    pending = first[1:]
    try:
        while True:
            if not pending:
                pending = commands.read()
                if not pending:
                    return 0  # the parent is gone
            _, payload = pending.pop(0)
            msg = pickle.loads(payload)
            if msg[0] == CLOSE:
                return 0
            _serve(rt, served, msg, out)
    finally:
        rt.close()


def _serve(rt: Runtime, served: frozenset[str], msg: tuple[Any, ...], out: Outbox) -> None:
    """One call, ``(CALL, method, args, kwargs)``: the method's return value, or the error it
    raised, is the reply; a method the interface does not mark served is refused."""
    try:
        _, method, args, kwargs = msg
        if method not in served:
            log.error("call refused: not a served method of the runtime", method=method)
            raise RuntimeFailure(
                f"the runtime worker serves {', '.join(sorted(served))}; {method!r} is none of them",
                method=str(method),
            )
        args = [out.add if a is Arg.SINK else a for a in args]
        kwargs = {k: out.add if v is Arg.SINK else v for k, v in kwargs.items()}
        out.reply(("ok", getattr(rt, method)(*args, **kwargs)))
    except Exception as exc:
        out.reply(_error_msg(exc))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
