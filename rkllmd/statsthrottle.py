"""The stats topic's rate limit: leading and trailing, so a burst of changes is folded into one
publish per interval and the last state always goes out.

Threads: ``StatsThrottle`` is used on the dispatcher thread only (rkllmd.dispatch).
"""

from __future__ import annotations

from typing import Any


class StatsThrottle:
    """Leading and trailing rate limit for the stats topic; used on the dispatcher thread only.

    A change after a quiet spell of ``interval_s`` goes out at once (leading). Changes that come
    sooner are held, the newest replacing older ones, and go out when the interval has passed
    (trailing), so the last state is never lost. ``wait_s`` is None while nothing is held: the
    dispatcher then blocks on its queue with no timeout, and nothing wakes up while idle.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None  # monotonic time of the last publish
        self._held: dict[str, Any] | None = None

    def offer(self, stats: dict[str, Any], now: float) -> dict[str, Any] | None:
        """A new snapshot: returned if it may be published now, else held for the trailing publish."""
        if self._last is None or now - self._last >= self.interval_s:
            self._last, self._held = now, None
            return stats
        self._held = stats
        return None

    def wait_s(self, now: float) -> float | None:
        """Seconds until the held snapshot is due, or None when nothing is held."""
        if self._held is None or self._last is None:
            return None
        return max(0.0, self._last + self.interval_s - now)

    def due(self, now: float, *, force: bool = False) -> dict[str, Any] | None:
        """The held snapshot once its time has come (at once with ``force``), else None."""
        if self._held is None or self._last is None:
            return None
        if not force and now - self._last < self.interval_s:
            return None
        stats, self._held, self._last = self._held, None, now
        return stats
