"""Log set-up: the lines' shape, and logging that can never take the daemon's threads down."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
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
