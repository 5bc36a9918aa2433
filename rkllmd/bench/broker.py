"""A throwaway loopback mosquitto for a benchmark run when no broker is given, and the helpers
the benchmarks and the tests share to start and stop the processes they own."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _find_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


# Looked up once, here in the parent: between fork and exec the child only calls it.
_PRCTL = _find_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when its parent dies.

    Every long-lived process a test or a benchmark starts (mosquitto, rkllmd, ``rkllmd bench``,
    scripts) uses it, so a run that crashes or is killed (SIGKILL, SIGILL, OOM) leaves no broker
    or daemon behind. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it is None, which Popen
    takes as no preexec function. The kernel sends the signal when the *thread* that forked the
    child ends, not the whole process: spawn from the main thread (pytest runs tests and fixtures
    there), or from a thread that lives as long as the child should. The setting survives
    ``exec`` and is not inherited by the child's own children.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), sig)

    return preexec


def stay_root(conf: str) -> str:
    """``conf`` plus ``user root`` when we run as root and it names no user itself.

    mosquitto started as root switches to the ``mosquitto`` user, and the kernel clears the
    parent-death signal on a change of user: such a broker would outlive a killed test run.
    """
    if os.geteuid() != 0 or any(line.split()[:1] == ["user"] for line in conf.splitlines()):
        return conf
    return conf.rstrip("\n") + "\nuser root\n"


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; else its default)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


# Ports free_port handed out in this process: two drawn before either listener binds (an OpenAI
# and an Ollama port for one daemon) are both free when drawn, and may be the same one.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nothing is bound to, for a listener started next, and one this process
    was not given before.

    Drawn outside the ephemeral range: a port from ``bind(0)`` is an ephemeral one, and any
    outgoing connection made before the listener binds (the daemon's own MQTT connection, started
    first) may be given the same port, which then stays "in use" for the connection's life.
    """
    lo, hi = _ephemeral_range()
    first, last = (10000, lo - 1) if lo - 1 - 10000 >= 5000 else (hi + 1, 65535)
    for _ in range(100):
        port = random.randint(first, last)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # a crowded range: an ephemeral port is still better than none
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return int(proc.returncode)


def mosquitto_binary() -> str:
    """The mosquitto executable; Debian puts it in /usr/sbin, often not on a user's PATH."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto, or run scripts/setup.sh)")


class LocalBroker:
    """mosquitto on 127.0.0.1 only, anonymous, no persistence, Nagle off (as the README advises)."""

    def __init__(self, workdir: Path) -> None:
        binary = mosquitto_binary()
        self.host, self.port = LOOPBACK, free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            stay_root(
                f"listener {self.port} {LOOPBACK}\nallow_anonymous true\npersistence false\n"
                "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            )
        )
        with open(workdir / "mosquitto.log", "wb") as log:
            # A session of its own: the terminal's Ctrl-C is for the benchmark, which stops us.
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)
