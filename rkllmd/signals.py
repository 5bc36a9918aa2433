"""Signals acted on outside their handler, on a thread of their own.

A Python signal handler runs on the main thread between two bytecodes, wherever that thread is:
in the middle of a log line's write (a buffered file is not reentrant), or holding a lock that
what the handler calls would take again (an Event's, a runtime's). So the handler here does
nothing: the signal's number reaches a pipe through ``signal.set_wakeup_fd``, written by the C
handler on whichever thread the kernel chose, and the *signals* thread reads it and does the work
(log, set an Event, start an abort), as any other thread would.

Threads: ``SignalWatch`` is entered and left on the main thread (only it may install handlers);
``on_signal`` runs on the ``signals`` thread, one signal after the other.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("rkllmd")


class SignalWatch:
    """While entered, ``signums`` no longer interrupt anything: each one that arrives is handed
    to ``on_signal`` on the ``signals`` thread.

    ``handler``, if given, is called in the handler itself, on the main thread: for what must
    happen there (raise KeyboardInterrupt), never for I/O, logging or a lock. ``then``: what the
    signals do once it is left (a ``signal.signal`` handler; by default what they did before)."""

    def __init__(
        self,
        signums: Iterable[int],
        on_signal: Callable[[int], None],
        *,
        handler: Callable[[int], None] | None = None,
        then: Any = None,
    ) -> None:
        self._signums = frozenset(int(s) for s in signums)
        self._on_signal, self._handler, self._then = on_signal, handler, then
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._w = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SignalWatch:
        r, w = os.pipe()
        os.set_blocking(w, False)  # set_wakeup_fd's condition: the C handler must never block
        try:
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)  # main thread only
        except ValueError:
            os.close(r)
            os.close(w)
            raise
        self._w = w
        self._thread = threading.Thread(target=self._watch, args=(r,), name="signals", daemon=True)
        self._thread.start()
        self._old = {s: signal.signal(s, self._handle) for s in self._signums}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old if self._then is None else self._then)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._w)  # the signals thread reads the end of the pipe and ends
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # an on_signal still busy (an abort) is left to finish

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Main thread, between two bytecodes: the signal is already in the pipe."""
        if self._handler is not None:
            self._handler(signum)

    def _watch(self, r: int) -> None:
        """The signals thread: every byte is one signal the C handler took (any Python-handled
        signal writes there; only ours are acted on)."""
        try:
            while data := os.read(r, 512):
                for signum in data:
                    if signum not in self._signums:
                        continue
                    try:
                        self._on_signal(signum)
                    except Exception:  # the next signal must still be acted on
                        log.exception("handling a signal failed", signal=signal.Signals(signum).name)
        finally:
            os.close(r)
