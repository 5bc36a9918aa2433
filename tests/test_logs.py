"""Log set-up: the lines' shape, and logging that can never take the daemon's threads down."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from rkllmd import logs
from tests.helpers import REPO


@pytest.fixture
def restore_logging() -> Iterator[None]:
    config, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    yield
    structlog.configure(**config)
    logging.getLogger().handlers[:] = handlers


def test_rkllmd_and_stdlib_lines_share_one_json_shape(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rkllmd's lines and a stdlib logger's (paho's) carry event, level, logger and timestamp; below
    the level nothing is written."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("info", "json")
    structlog.get_logger("rkllmd.loop").info("request done", tokens=3)
    structlog.get_logger("rkllmd.loop").debug("not shown")
    logging.getLogger("paho").warning("connection %s", "lost")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["logger"]) for e in lines] == [
        ("request done", "info", "rkllmd.loop"),
        ("connection lost", "warning", "paho"),
    ]
    assert lines[0]["tokens"] == 3 and all(e["timestamp"].endswith("Z") for e in lines)


def test_a_line_to_a_closed_stderr_is_dropped_not_raised(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nobody reading stderr any more, a log call returns as if it had written."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone: every write fails with EPIPE
    gone = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stderr", gone)
    logs.configure("info", "json")
    try:
        structlog.get_logger("rkllmd").info("request done", tokens=1)
        structlog.get_logger("rkllmd").exception("and an error")
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):  # what could not be written is still in its buffer
            gone.close()


# Logs lines on the main thread while another thread sends it signals, to the main thread itself
# and to the process, as fast as it can; the signals are acted on (and logged) by rkllmd.signals.
_SIGNALLED = r"""
import os, signal, sys, threading
import structlog
from rkllmd import logs
from tests.helpers import REPO
from rkllmd.signals import SignalWatch

logs.configure("info", "json")
log = structlog.get_logger("rkllmd.test")
seen = 0

def on_signal(signum):
    global seen
    seen += 1
    log.info("signal", n=seen)

lines, most = int(sys.argv[1]), int(sys.argv[2])
sent, done, main = 0, threading.Event(), threading.main_thread().ident

def sender():
    global sent
    while not done.is_set() and sent < most:
        if sent % 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            signal.pthread_kill(main, signal.SIGUSR1)
        sent += 1

with SignalWatch((signal.SIGUSR1,), on_signal):
    t = threading.Thread(target=sender)
    t.start()
    for i in range(lines):
        log.info("line", i=i, pad="x" * 300)
    done.set()
    t.join()
print(seen, sent)
"""


def test_signals_arriving_while_lines_are_written_lose_and_corrupt_none() -> None:
    """A process sent signals in a loop while it logs: every line it logged arrives whole and in
    order, those of the main thread and one per signal acted on, and it exits."""
    lines = 3000
    out = subprocess.run(
        [sys.executable, "-c", _SIGNALLED, str(lines), "20000"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen, sent = map(int, out.stdout.split())
    events = [json.loads(line) for line in out.stderr.splitlines()]
    assert [e["i"] for e in events if e["event"] == "line"] == list(range(lines))
    assert [e["n"] for e in events if e["event"] == "signal"] == list(range(1, seen + 1))
    assert len(events) == lines + seen
    assert 0 < seen <= sent  # signals sent while one is pending are merged by the kernel
