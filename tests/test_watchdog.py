"""The watchdog sleeps until the running generation's next deadline, and not at all while idle."""

from __future__ import annotations

from typing import Any

import pytest

from rkllmd.exchange import Exchange
from rkllmd.loop import InferenceLoop, Limits
from rkllmd.runtime.models import ModelRegistry


class _Runtime:
    """Records abort and kill calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def abort(self) -> None:
        self.calls.append("abort")

    def kill(self) -> None:
        self.calls.append("kill")


@pytest.fixture
def loop() -> tuple[InferenceLoop, _Runtime]:
    lim = Limits(
        queue_size=2, first_token_timeout_s=5.0, total_timeout_s=60.0, stall_timeout_s=2.0, abort_grace_s=3.0
    )
    lp = InferenceLoop(ModelRegistry({}), "m", lim, lambda ev: None)
    rt = _Runtime()
    lp._runtime = rt  # type: ignore[assignment]
    return lp, rt


def running(lp: InferenceLoop, started: float, **run: Any) -> Exchange:
    job = Exchange(command="generate", topic="t", id="r1")
    job.run.started_at = started
    for k, v in run.items():
        setattr(job.run, k, v)
    lp._current = job
    return job


def test_idle_means_no_timeout_at_all(loop: tuple[InferenceLoop, _Runtime]) -> None:
    """With nothing running, or a job that is not a started generation, the watchdog waits for ever."""
    lp, rt = loop
    assert lp._check_deadlines(100.0) is None
    lp._current = Exchange(command="load", topic="t")
    assert lp._check_deadlines(100.0) is None
    running(lp, started=None)  # type: ignore[arg-type]
    assert lp._check_deadlines(100.0) is None and rt.calls == []


def test_wakes_at_the_first_token_deadline_then_at_the_stall_one(
    loop: tuple[InferenceLoop, _Runtime],
) -> None:
    """Before the first token the next deadline is the first-token limit, looked at again within a
    stall limit (a token does not wake the watchdog); after it, the stall limit."""
    lp, rt = loop
    job = running(lp, started=100.0)
    assert lp._check_deadlines(101.0) == pytest.approx(2.0)  # stall 2 s, before first-token's 4 s
    assert lp._check_deadlines(104.0) == pytest.approx(1.0)  # the first-token deadline is nearer
    job.run.first_token_at = job.run.last_token_at = 101.5
    assert lp._check_deadlines(102.0) == pytest.approx(1.5)
    job.run.last_token_at = 103.0  # a token moved it: the early wake finds it later
    assert lp._check_deadlines(103.5) == pytest.approx(1.5) and rt.calls == []


def test_a_run_wedged_after_its_first_token_is_stalled_at_the_stall_limit(
    loop: tuple[InferenceLoop, _Runtime],
) -> None:
    """A run whose first token came just after the watchdog went to sleep, then nothing: it is
    aborted as stalled stall_timeout_s after that token, not at the (later) first-token deadline."""
    lp, rt = loop
    job = running(lp, started=100.0)
    wait = lp._check_deadlines(100.0)
    assert wait == pytest.approx(2.0)  # asleep until 102, not 105
    job.run.first_token_at = job.run.last_token_at = 100.1  # no wake-up for it
    assert lp._check_deadlines(100.0 + wait) == pytest.approx(0.1)
    assert lp._check_deadlines(102.1) == pytest.approx(3.0)  # the abort's grace
    assert job.run.abort_reason == "stalled" and rt.calls == ["abort"]


def test_a_missed_deadline_aborts_and_a_wedged_runtime_is_killed_after_the_grace(
    loop: tuple[InferenceLoop, _Runtime],
) -> None:
    """Past a limit the run is aborted and the next wake is at the grace's end, when it is killed."""
    lp, rt = loop
    job = running(lp, started=100.0)
    assert lp._check_deadlines(105.0) == pytest.approx(3.0)
    assert job.run.abort_reason == "first_token_timeout" and rt.calls == ["abort"]
    assert lp._check_deadlines(107.0) == pytest.approx(1.0)
    assert lp._check_deadlines(108.0) is None and rt.calls == ["abort", "kill"]
    assert lp._check_deadlines(200.0) is None and rt.calls == ["abort", "kill"]  # killed once


def test_the_watchdog_thread_ends_on_stop_without_a_timeout_to_wait_for() -> None:
    """stop() wakes the watchdog that waits without a timeout, and it ends at once."""
    lp = InferenceLoop(ModelRegistry({}), "m", Limits(2, 5.0, 60.0), lambda ev: None)
    lp.start()
    lp.stop(0.0)
    assert not lp._watchdog.is_alive()
