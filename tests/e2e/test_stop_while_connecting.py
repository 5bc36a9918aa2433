"""A stop request while the broker is still unreachable ends rkllmd at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from rkllmd.bench.broker import free_port
from tests.helpers import DaemonProc, write_config


def test_sigterm_during_first_connect_backoff_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM while rkllmd retries its first connection stops it within seconds, with exit code 0."""
    port = free_port()  # nothing listens here
    cfg = write_config(
        tmp_path / "noconn.toml",
        {"mqtt": {"host": "127.0.0.1", "port": port, "connect_retries": 50}, "log": {"format": "json"}},
    )
    d = DaemonProc(cfg, tmp_path)
    d.wait_log("broker not reachable, retrying", timeout=30)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.proc.wait(timeout=20)
    assert code == 0, d.log_text()[-2000:]
    assert time.monotonic() - t0 < 5  # the backoff (up to 15 s a step) no longer holds it
    assert "stopped before it reached the broker" in d.log_text()
