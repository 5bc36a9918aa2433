"""rkllmd.signals.SignalWatch: what a signal does once the watch is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.helpers import REPO

_AFTER = r"""
import os, signal
from rkllmd.signals import SignalWatch

before = []
signal.signal(signal.SIGUSR1, lambda s, f: before.append(s))
seen = []
with SignalWatch((signal.SIGUSR1, signal.SIGTERM), seen.append, then=None):
    pass
with SignalWatch((signal.SIGTERM,), seen.append, then=signal.SIG_IGN):
    pass
os.kill(os.getpid(), signal.SIGUSR1)  # the handler from before the watch again
os.kill(os.getpid(), signal.SIGTERM)  # ignored: the process lives on
print(before, seen)
"""


def test_a_left_watch_restores_the_old_handler_or_leaves_the_one_asked_for() -> None:
    """By default the handlers from before the watch come back; ``then=SIG_IGN`` (the daemon's,
    once stopped) leaves a late SIGTERM without effect, so the exit stays clean."""
    out = subprocess.run(
        [sys.executable, "-c", _AFTER],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == f"[{int(signal.SIGUSR1)}] []"
