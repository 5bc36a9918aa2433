"""The leading and trailing rate limit in front of the retained stats topic."""

from __future__ import annotations

import itertools

from rkllmd.statsthrottle import StatsThrottle


def test_first_change_goes_out_at_once_and_idle_has_no_deadline() -> None:
    """A change after a quiet spell is published at once, and nothing is scheduled afterwards."""
    gate = StatsThrottle(0.25)
    assert gate.wait_s(100.0) is None
    assert gate.offer({"n": 1}, 100.0) == {"n": 1}
    assert gate.wait_s(100.0) is None and gate.due(100.0) is None
    assert gate.offer({"n": 2}, 100.3) == {"n": 2}  # a whole interval later: leading again


def test_changes_within_the_interval_fold_into_one_trailing_publish_of_the_last() -> None:
    """Changes inside the interval are held, only the newest is published, when the interval ends."""
    gate = StatsThrottle(0.25)
    assert gate.offer({"n": 1}, 10.0) == {"n": 1}
    assert gate.offer({"n": 2}, 10.05) is None
    assert gate.offer({"n": 3}, 10.1) is None
    assert abs((gate.wait_s(10.1) or 0) - 0.15) < 1e-9
    assert gate.due(10.2) is None  # not yet
    assert gate.due(10.25) == {"n": 3}
    assert gate.wait_s(10.25) is None and gate.due(11.0) is None
    # the trailing publish starts a new interval
    assert gate.offer({"n": 4}, 10.3) is None
    assert gate.due(10.5, force=True) == {"n": 4}


def test_at_most_one_publish_per_interval_over_a_burst() -> None:
    """A thousand changes over one second give at most five publishes, the last one being the last change."""
    gate = StatsThrottle(0.25)
    out: list[tuple[float, int]] = []
    for i in range(1000):
        now = 50.0 + i / 1000
        for got in (gate.due(now), gate.offer({"n": i}, now)):
            if got is not None:
                out.append((now, got["n"]))
    end = gate.due(51.0 + 0.25)
    assert end is not None
    out.append((51.25, end["n"]))
    assert out[-1][1] == 999
    assert len(out) <= 6
    assert all(b[0] - a[0] >= 0.25 - 1e-9 for a, b in itertools.pairwise(out))
