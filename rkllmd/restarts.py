"""The restart budget: how often a model's runtime worker may crash before rkllmd stops reloading it.

Threads: the inference thread only (rkllmd/loop.py), so no lock. A model that crashed more than
``limits.restart_budget`` times within ``limits.restart_window_s`` is not loaded again until the
oldest of those crashes leaves the window; a request for it meanwhile gets ``model_load_failed``.
"""

from __future__ import annotations

import collections
import time

from rkllmd.errors import ModelLoadError


class RestartBudget:
    """Crash times per model, and what they allow."""

    def __init__(self, budget: int, window_s: float) -> None:
        self.budget, self.window_s = budget, window_s
        self._crashes: dict[str, collections.deque[float]] = {}

    def crashed(self, name: str) -> None:
        """The worker of ``name`` died just now."""
        self._crashes.setdefault(name, collections.deque()).append(time.monotonic())

    def _recent(self, name: str, now: float) -> collections.deque[float]:
        recent = self._crashes.get(name) or collections.deque()
        while recent and now - recent[0] > self.window_s:
            recent.popleft()
        return recent

    def check(self, name: str) -> None:
        """Raise ModelLoadError while ``name`` has spent its budget (before loading it)."""
        now = time.monotonic()
        recent = self._recent(name, now)
        if len(recent) > self.budget:
            wait = self.window_s - (now - recent[0])
            raise ModelLoadError(
                f"model {name!r} crashed {len(recent)} times in {self.window_s:g} s; "
                f"not restarting it for another {wait:.0f} s",
                crashes=len(recent),
            )

    def after_crash(self, name: str) -> str:
        """What becomes of ``name`` after its latest crash, as the crash's reply ends with it."""
        n = len(self._recent(name, time.monotonic()))
        if n > self.budget:
            return (
                f"the model is not reloaded: it crashed {n} times in {self.window_s:g} s "
                f"(limits.restart_budget {self.budget})"
            )
        return "the model is reloaded"
