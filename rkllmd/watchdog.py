"""The inference loop's watchdog: a generation that overruns its first-token, total or stall time
limit is aborted, and a worker that ignores the abort is killed.

Threads: ``Watchdog._watch`` is the body of the *watchdog thread*, which ``InferenceLoop`` (a
``Watchdog``) creates and starts (rkllmd/loop.py); ``abort`` and ``kill`` are the only runtime
calls it makes. ``_wake_watchdog`` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import structlog

from rkllmd.exchange import AbortReason, Exchange
from rkllmd.jobs import Timeouts
from rkllmd.runtime.base import Runtime


class Deadlines(Timeouts, Protocol):
    """The time limits the watchdog enforces: those a timeout error names, and how long an abort
    may take (rkllmd.loop.Limits has them; a protocol, since the loop imports this module)."""

    @property
    def abort_grace_s(self) -> float: ...


log = structlog.get_logger("rkllmd.loop")  # its lines are the loop's, as before it had a module


class Watchdog:
    """The watchdog thread's part of rkllmd.loop.InferenceLoop, which owns the attributes
    declared here."""

    limits: Deadlines
    _current: Exchange | None
    _runtime: Runtime | None
    _stop: threading.Event
    _watch_cond: threading.Condition

    def _abort_runtime(self) -> None: ...

    # --- watchdog thread -----------------------------------------------------------------------

    def _wake_watchdog(self) -> None:
        """A generation started or was asked to abort: the watchdog's next deadline changed (any thread)."""
        with self._watch_cond:
            self._watch_cond.notify()

    def _watch(self) -> None:
        """Sleep until the running generation's next deadline; with none running, without a
        timeout, so an idle daemon has no wake-ups. A token moves the stall deadline later
        without waking it: it wakes at the old one, finds it moved, and sleeps again. The first
        token does not wake it either, though its stall deadline may come before the first-token
        one: until a token came, it looks again at least every ``stall_timeout_s``."""
        with self._watch_cond:
            while not self._stop.is_set():
                self._watch_cond.wait(self._check_deadlines(time.monotonic()))

    def _check_deadlines(self, now: float) -> float | None:
        """Abort (or kill) the running generation if a limit is past; seconds to its next deadline,
        or None when nothing is to be watched until the next generation starts (watchdog thread)."""
        lim = self.limits
        job = self._current
        if job is None or job.run.started_at is None:  # only a generation's run is started (begin)
            return None
        run, started = job.run, job.run.started_at
        if run.abort_reason is not None:
            # Abort asked for but the run goes on: a wedged native runtime. Only a worker
            # process can be ended from outside; a thread-mode runtime has to be waited for.
            if run.aborted_at is None:
                return None  # killed already: its end, then the next start, is what comes next
            due = run.aborted_at + lim.abort_grace_s
            if now < due:
                return due - now
            kill = getattr(self._runtime, "kill", None)
            if kill is not None:
                log.error("runtime ignores abort; killing its worker", request_id=job.id)
                kill()
                run.aborted_at = None
            return None
        deadlines: list[tuple[float, AbortReason]] = []
        if run.first_token_at is None:
            deadlines.append((started + lim.first_token_timeout_s, "first_token_timeout"))
        deadlines.append((started + lim.total_timeout_s, "timeout"))
        if run.last_token_at is not None:
            deadlines.append((run.last_token_at + lim.stall_timeout_s, "stalled"))
        due, reason = min(deadlines, key=lambda d: d[0])
        if now < due:
            if run.last_token_at is None:
                # A first token that comes now makes the run stalled at now + stall_timeout_s,
                # which is sooner than `due` where stall_timeout_s < first_token_timeout_s; waking
                # only at `due` caught a run wedged after its first token that much too late.
                return min(due - now, lim.stall_timeout_s)
            return due - now
        log.warning("aborting generation", request_id=job.id, reason=reason)
        run.abort_reason = reason
        run.aborted_at = now
        self._abort_runtime()
        return lim.abort_grace_s
