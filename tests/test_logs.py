"""Log set-up: the lines' shape, and logging that can never take the daemon's threads down."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog

from rkllmd import logs


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


def test_a_line_logged_while_another_is_being_written_does_not_deadlock(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler that logs can run in the middle of a line's write on the same thread (the
    daemon's "stop requested"): both lines are written, the thread goes on."""

    class Interrupted(io.StringIO):
        """A stream whose first write runs a log call, as a signal handler arriving then would;
        not reentrant, as a buffered file is not."""

        nested = writing = False

        def write(self, s: str) -> int:
            if self.writing:
                raise RuntimeError("reentrant call inside the stream")
            self.writing = True
            try:
                n = super().write(s)
                if not self.nested:
                    self.nested = True
                    structlog.get_logger("rkllmd").info("stop requested")
            finally:
                self.writing = False
            return n

    out = Interrupted()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("info", "json")
    worker = threading.Thread(
        target=lambda: structlog.get_logger("rkllmd").info("shutting down"), daemon=True
    )
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the nested log call deadlocked"
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["shutting down", "stop requested"]
