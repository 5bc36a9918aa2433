"""Stop signals: SIGINT as SIGTERM, one the kernel hands to another of rkllmd's threads, a second
one while stopping."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time

import pytest

from tests.e2e.conftest import Start

_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


@pytest.mark.skipif(_SYS_TGKILL is None, reason="tgkill's syscall number is known for x86_64 and aarch64")
def test_sigterm_delivered_to_another_thread_stops_the_daemon(start_daemon: Start) -> None:
    """SIGTERM sent to a thread other than the main one (as the kernel may do) ends rkllmd cleanly."""
    d, _ = start_daemon()
    pid = d.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "rkllmd runs more than its main thread"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_SYS_TGKILL, pid, others[-1], signal.SIGTERM) == 0, ctypes.get_errno()
    deadline = time.monotonic() + 20
    while d.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.proc.poll() == 0, d.log_text()[-2000:]
    assert '"rkllmd stopped"' in d.log_text()


def test_sigint_stops_the_daemon_and_a_second_signal_while_stopping_changes_nothing(
    start_daemon: Start,
) -> None:
    """Ctrl-C (SIGINT) stops rkllmd as SIGTERM does; a SIGTERM while it stops is logged, and the
    stop goes on once to its end, exit code 0."""
    d, _ = start_daemon()
    d.signal(signal.SIGINT)
    d.wait_log('"stop requested"', timeout=20)
    d.signal(signal.SIGTERM)  # a no-op if rkllmd has exited already
    assert d.proc.wait(timeout=30) == 0, d.log_text()[-2000:]
    lines = [json.loads(ln) for ln in d.log_text().splitlines() if ln.startswith("{")]
    asked = [e for e in lines if e["event"] == "stop requested"]
    assert asked[0]["signal"] == "SIGINT" and not asked[0]["stopping"]
    assert all(e["signal"] == "SIGTERM" and e["stopping"] for e in asked[1:])
    assert [e["event"] for e in lines].count("rkllmd stopped") == 1
