"""systemd's notify protocol (``Type=notify``) with the standard library only.

``sd_notify(3)``: datagrams of ``KEY=value`` lines to the unix socket named by ``$NOTIFY_SOCKET``
(``@name`` is the abstract namespace). rkllmd sends ``READY=1`` once it is connected and
subscribed, ``STATUS=...`` lines, ``STOPPING=1`` at shutdown, and ``WATCHDOG=1`` every half of
``$WATCHDOG_USEC`` from a small thread, but only while a liveness check passes, so systemd
restarts a daemon whose inference loop is wedged. Without ``$NOTIFY_SOCKET`` every call is a
no-op.

Threads: the *sd-watchdog* thread pings; any thread may call ``notify``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("rkllmd.sdnotify")


class Notifier:
    """One connection to systemd's notify socket (or nothing, outside systemd)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        if addr is not None and addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr
        self.watchdog_interval_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        mine = not pid or pid == str(os.getpid())  # WATCHDOG_PID names the process meant to ping
        if addr is not None and usec and usec.isdigit() and int(usec) > 0 and mine:
            self.watchdog_interval_s = int(usec) / 2e6
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wedged = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False (never an exception) if it could not go."""
        if self._addr is None:
            return False
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._addr)
            except OSError as exc:
                log.debug("sd_notify failed", error=str(exc))
                return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.stop_watchdog()
        self.notify("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self, alive: Callable[[], str | None]) -> None:
        """Ping ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while ``alive()`` returns None.

        ``alive`` returns None when healthy, else why not (it becomes the STATUS line). A check that
        blocks (a deadlocked lock) blocks the pings too, which is what systemd should see.
        """
        if self.watchdog_interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(alive,), name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)

    def close(self) -> None:
        self.stop_watchdog()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _watch(self, alive: Callable[[], str | None]) -> None:
        interval = self.watchdog_interval_s
        assert interval is not None
        while not self._stop.is_set():
            try:
                problem = alive()
            except Exception as exc:  # a failing check is a failed check, not a dead thread
                problem = f"liveness check failed: {exc}"
            if problem is None:
                if self._wedged:
                    self._wedged = False
                    log.warning("liveness restored; watchdog pings resume")
                    self.notify("WATCHDOG=1", "STATUS=serving (recovered)")
                else:
                    self.notify("WATCHDOG=1")
            elif not self._wedged:
                self._wedged = True
                log.error("not alive; watchdog pings stop so systemd can restart rkllmd", problem=problem)
                self.notify(f"STATUS=not alive: {problem}")
            self._stop.wait(interval)
