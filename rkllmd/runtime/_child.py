"""The runtime worker process: ``python -m rkllmd.runtime._child CMD_FD EVENT_FD CTL_FD``.

rkllmd.runtime.worker starts it with three inherited pipe ends and talks to it in frames: a
kind byte, a 4-byte little-endian length, the payload. Parent to child, on CMD_FD: commands
(``K_CMD``, a pickled tuple: the opening one, then generate, clear_cache, ... close). Child to
parent, on EVENT_FD: ``K_TOKENS`` (the UTF-8 text of one or more tokens),
``K_REPLY`` (a pickled reply to the last command) and ``K_LOG`` (a log record). CTL_FD carries
one byte per abort; its end of file means the parent is gone, and the worker exits at once
(as it does when a write to EVENT_FD finds the parent gone).

What the worker imports is only what its runtime needs: no multiprocessing (so no resource
tracker process), no MQTT, no configuration loader, no pydantic (the model's settings come as
:class:`rkllmd.runtime.base.Table` s, and ``open_runtime`` from the runtime package's
``__init__``, which imports no settings model). structlog is not imported either (it brings
asyncio and ssl along, some 11 MB): :class:`_LogFace` stands in for it, and every log call
becomes a ``K_LOG`` frame that the parent logs with its own configuration.

Threads here: *main* serves the commands and runs the runtime, whose token callback hands each
token to :class:`Outbox` (one non-blocking write, or kept when the pipe is full); the *sender*
thread writes what was kept as one ``K_TOKENS`` frame, so a runtime that outpaces the parent
sends many tokens per frame and never waits for it; the *control* thread turns abort bytes into
``abort()`` calls. The parent reads all frames a read brings at once, so it batches too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import threading
import types
from typing import Any

K_CMD = b"C"
K_TOKENS = b"T"
K_REPLY = b"R"
K_LOG = b"L"
_HEAD = struct.Struct("<cI")

# Log levels as numbers, so the child filters before it sends anything.
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    """One whole frame to a blocking ``fd`` (the caller serialises writers)."""
    data = memoryview(_frame(kind, payload))
    while data:
        n = os.write(fd, data)
        data = data[n:]


class FrameReader:
    """Frames from a pipe, as many as one read() brings: a batch is parsed in one go."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._rest = bytearray()  # the start of a frame the reads so far did not finish
        self._need = 0  # how long _rest must grow before that frame is whole

    def read(self) -> list[tuple[bytes, bytes]]:
        """Block until at least one whole frame is in; [] at end of file."""
        frames: list[tuple[bytes, bytes]] = []
        while not frames:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return []
            if self._rest:  # a frame longer than a read: gathered, not parsed again each read
                self._rest += chunk
                if len(self._rest) < self._need:
                    continue
                chunk, self._rest = bytes(self._rest), bytearray()
            frames = self._split(chunk)
        return frames

    def _split(self, data: bytes) -> list[tuple[bytes, bytes]]:
        pos, out, head = 0, [], _HEAD.size
        while len(data) - pos >= head:
            kind, size = _HEAD.unpack_from(data, pos)
            end = pos + head + size
            if end > len(data):
                break
            out.append((kind, data[pos + head : end]))
            pos = end
        if pos < len(data):
            self._rest = bytearray(data[pos:])
            left = len(data) - pos
            self._need = head + _HEAD.unpack_from(data, pos)[1] if left >= head else head
        return out


def tokens_payload(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def tokens_text(payload: bytes) -> str:
    """The text of a ``K_TOKENS`` frame."""
    return payload.decode("utf-8", "surrogatepass")


class Outbox:
    """Everything the worker sends to the parent, in order, through one non-blocking pipe end.

    A token (``add``, on the runtime's callback thread) is written at once while the pipe takes
    it: one write, so a token the parent can read is never lost to a crash that follows. When the
    parent falls behind and the pipe is full, the callback does not wait: the text is kept, and
    the *sender* thread writes all the tokens kept meanwhile as one frame once the pipe drains.
    Replies and log records (``send``, any other thread) wait until they and everything before
    them are written.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._cond = threading.Condition(threading.Lock())
        self._unsent = bytearray()  # bytes of frames already made, not yet written
        self._texts: list[str] = []  # tokens not framed yet (the pipe was full)
        self._sender = threading.Thread(target=self._drain, name="worker-sender", daemon=True)
        self._sender.start()

    def add(self, text: str, token_id: int | None = None) -> None:
        """The token sink (the runtime's thread): write the token now, or keep it; never blocks."""
        with self._cond:
            if self._unsent or self._texts:
                self._texts.append(text)
                self._cond.notify_all()
                return
            self._write_locked(_frame(K_TOKENS, tokens_payload(text)))

    def send(self, kind: bytes, payload: bytes) -> None:
        """A whole frame after everything before it; blocks until the pipe has taken it."""
        with self._cond:
            self._frame_tokens_locked()
            if self._unsent:
                self._unsent += _frame(kind, payload)
                self._cond.notify_all()
            else:
                self._write_locked(_frame(kind, payload))
            while self._unsent:
                self._cond.wait()

    def reply(self, msg: tuple[Any, ...]) -> None:
        self.send(K_REPLY, pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _frame_tokens_locked(self) -> None:
        if self._texts:
            self._unsent += _frame(K_TOKENS, tokens_payload("".join(self._texts)))
            self._texts = []

    def _write_locked(self, data: bytes | bytearray) -> None:
        """Write what the pipe takes now; keep the rest for the sender thread."""
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:  # the parent is gone (say it stopped while the model loaded)
            os._exit(0)  # as the control thread does on its end of file: nothing left to serve
        if n < len(data):
            self._unsent += data[n:]
            self._cond.notify_all()

    def _drain(self) -> None:
        """The sender thread: whenever something is kept, wait for room in the pipe and write it."""
        while True:
            with self._cond:
                while not (self._unsent or self._texts):
                    self._cond.wait()
            select.select([], [self.fd], [])
            with self._cond:
                self._frame_tokens_locked()
                data, self._unsent = self._unsent, bytearray()
                self._write_locked(data)
                self._cond.notify_all()


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


# --- structlog's face, for the runtime modules' log calls --------------------------------------


def _plain(value: Any) -> Any:
    """A log value the parent can unpickle without our classes: scalars as they are, else text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class _Logger:
    """What ``structlog.get_logger(name)`` returns in the worker: each call is sent to the parent."""

    def __init__(self, face: _LogFace, name: str, bound: dict[str, Any] | None = None) -> None:
        self._face, self._name, self._bound = face, name, bound or {}

    def bind(self, **kw: Any) -> _Logger:
        return _Logger(self._face, self._name, {**self._bound, **kw})

    def _log(self, level: str, event: str, kw: dict[str, Any]) -> None:
        self._face.emit(level, self._name, event, {**self._bound, **kw})

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._log("critical", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        import traceback

        self._log("error", event, {**kw, "exception": traceback.format_exc()})


class _LogFace:
    """The part of structlog rkllmd's runtime modules use, as a module: ``get_logger`` and
    ``contextvars``; records below ``level`` are dropped here, the rest go to the parent."""

    def __init__(self, out: Outbox | None, level: str) -> None:
        self.out, self.min = out, LEVELS.get(level, 20)
        self.context: dict[str, Any] = {}

    def emit(self, level: str, name: str, event: str, kw: dict[str, Any]) -> None:
        if LEVELS.get(level, 20) < self.min or self.out is None:
            return
        record = (level, name, str(event), _plain({**self.context, **kw}))
        with contextlib.suppress(OSError):  # the parent is gone; the control thread ends the process
            self.out.send(K_LOG, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("structlog", "rkllmd's worker: log calls go to the parent process")
        ctx = types.ModuleType("structlog.contextvars")

        def bind_contextvars(**kw: Any) -> None:
            self.context.update(kw)

        def unbind_contextvars(*keys: str) -> None:
            for k in keys:
                self.context.pop(k, None)

        ctx.bind_contextvars = bind_contextvars  # type: ignore[attr-defined]
        ctx.unbind_contextvars = unbind_contextvars  # type: ignore[attr-defined]
        mod.contextvars = ctx  # type: ignore[attr-defined]
        mod.get_logger = lambda name=None, **kw: _Logger(self, str(name or "rkllmd"), kw)  # type: ignore[attr-defined]
        mod.getLogger = mod.get_logger  # type: ignore[attr-defined]
        return mod


def install_log_face(out: Outbox | None, level: str) -> _LogFace:
    """Make ``import structlog`` give the worker's face; before any runtime module is imported."""
    face = _LogFace(out, level)
    mod = face.module()
    sys.modules["structlog"] = mod
    sys.modules["structlog.contextvars"] = mod.contextvars
    return face


# --- the worker's main ------------------------------------------------------------------------


def _error_msg(exc: BaseException) -> tuple[Any, ...]:
    from rkllmd.errors import RkllmdError

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
    # The opening command is unpickled only after the log face is installed: unpickling imports
    # the runtime's package, whose modules take structlog at import.
    face = install_log_face(out, "info")
    open_runtime, name, cfg, settings, level = pickle.loads(first[0][1])
    face.min = LEVELS.get(level, 20)
    face.context["worker"] = name
    rt = open_runtime(name, cfg, settings)
    try:
        rt.open()
    except BaseException as exc:
        out.reply(_error_msg(exc))
        rt.close()
        return 0
    out.reply(("opened", {"context_length": rt.context_length, "describe": rt.describe()}))

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
            if msg[0] == "close":
                return 0
            _serve_one(rt, name, msg, out)
    finally:
        rt.close()


def _serve_one(rt: Any, name: str, msg: tuple[Any, ...], out: Outbox) -> None:
    op = msg[0]
    try:
        if op == "generate":
            from rkllmd.runtime.base import check_context  # imported with the runtime already

            n_prompt = check_context(rt, msg[1], name)  # here, not by a round trip from the parent
            result = rt.generate(msg[1], out.add)
            if result.perf.prompt_tokens is None:  # as the loop falls back to its own count
                result.perf.prompt_tokens = n_prompt
            out.reply(("done", result))
        elif op == "clear_cache":
            rt.clear_cache(msg[1])
            out.reply(("ok", None))
        elif op == "count_tokens":
            out.reply(("ok", rt.count_tokens(msg[1])))
        elif op == "prompt_tokens":
            out.reply(("ok", rt.prompt_tokens(msg[1])))
        else:
            out.reply(("error", "RuntimeFailure", f"unknown worker command {op!r}", {}))
    except Exception as exc:
        out.reply(_error_msg(exc))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
