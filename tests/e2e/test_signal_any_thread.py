"""A stop signal that the kernel hands to one of rkllmd's other threads still stops it."""

from __future__ import annotations

import ctypes
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
