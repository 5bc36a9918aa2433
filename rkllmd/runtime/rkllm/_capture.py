"""Drain the runtime's fd-1 output into the log while a model is open.

librkllmrt writes its ``I rkllm: …`` / ``E rkllm: …`` lines with fprintf+fflush to stdout (fd 1).
Under systemd fd 1 is the journal, but when rkllmd runs under a parent that never reads its stdout
pipe, a full pipe would block inference. While at least one model is open (refcounted), a pipe is
dup2'ed over fd 1 and a reader thread turns each line into a log record with logger name
"rkllm"; the last release puts the original fd 1 back.

Side effect worth knowing: anything else written to fd 1 meanwhile (print() included) is logged
the same way. Lines carrying our own marker are passed through to the original fd 1 untouched, so
a structlog configured to print to stdout does not loop back into itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

from rkllmd import logface

MARKER = "rkllm-stdout"  # value of the ``src`` key on every record we emit


def _flush_c_stdio() -> None:
    # Push what the C runtime buffered for stdout into the current fd 1 before it is swapped.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


class Fd1Capture:
    """Process-wide, refcounted redirection of fd 1 into the "rkllm" logger."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs = 0
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._refs > 0

    def acquire(self) -> None:
        """Start capturing (or join the capture already running). Any thread."""
        with self._lock:
            self._refs += 1
            if self._refs > 1:
                return
            sys.stdout.flush()
            _flush_c_stdio()
            r, w = os.pipe()
            self._saved = os.dup(1)
            os.dup2(w, 1)
            os.close(w)
            # The reader gets its own duplicate of the original fd 1 for pass-through lines.
            passthrough = os.dup(self._saved)
            self._thread = threading.Thread(
                target=self._reader, args=(r, passthrough), name="rkllm-stdout", daemon=True
            )
            self._thread.start()

    def release(self) -> None:
        """Stop capturing when the last user releases; the reader drains what is left. Any thread."""
        with self._lock:
            if self._refs == 0:
                return
            self._refs -= 1
            if self._refs > 0:
                return
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            _flush_c_stdio()
            saved, self._saved = self._saved, None
            thread, self._thread = self._thread, None
            if saved is not None:
                # Closing the pipe's last write end (fd 1) lets the reader see EOF after draining.
                os.dup2(saved, 1)
                os.close(saved)
        if thread is not None:
            thread.join(timeout=5.0)

    @staticmethod
    def _reader(fd: int, passthrough: int) -> None:
        """Runs on the "rkllm-stdout" thread: read lines until EOF and log them."""
        logger = logface.get_logger("rkllm")
        buf = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except InterruptedError:
                    continue
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    _emit(logger, raw, passthrough)
            if buf:
                _emit(logger, buf, passthrough)
        finally:
            os.close(fd)
            os.close(passthrough)


def _emit(logger: logface.Logger, raw: bytes, passthrough: int) -> None:
    text = raw.decode("utf-8", "replace").rstrip()
    if not text:
        return
    if MARKER in text:
        # Our own record echoed back by a logger printing to stdout: pass it through, do not re-log.
        with contextlib.suppress(OSError):
            os.write(passthrough, raw + b"\n")
        return
    try:
        if text.startswith("E ") or " E rkllm" in text or text.startswith("E RKNN"):
            logger.error(text, src=MARKER)
        elif text.startswith("W ") or " W rkllm" in text:
            logger.warning(text, src=MARKER)
        else:
            logger.info(text, src=MARKER)
    except Exception:
        pass  # a broken log pipeline must not kill the drain thread


_CAPTURE: Fd1Capture | None = None
_CAPTURE_LOCK = threading.Lock()


def fd1_capture() -> Fd1Capture:
    """The one capture of this process (created on first use)."""
    global _CAPTURE
    with _CAPTURE_LOCK:
        if _CAPTURE is None:
            _CAPTURE = Fd1Capture()
        return _CAPTURE
