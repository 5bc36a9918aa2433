"""A throwaway loopback mosquitto for a benchmark run when no broker is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
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
            f"listener {self.port} {LOOPBACK}\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        )
        with open(workdir / "mosquitto.log", "wb") as log:
            # A session of its own: the terminal's Ctrl-C is for the benchmark, which stops us.
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)
