"""The inference queue's places and order: whether a job gets in, and which waiting job runs next.

Threads: a ``JobQueue`` belongs to the inference loop (rkllmd/loop.py) and every call is made
holding the loop's lock (``InferenceLoop._cond``): ``add`` from any thread that submits (ingress,
the fleet, plugins), ``remove`` from any thread that cancels, ``drain`` from the thread that stops
the daemon, ``take`` from the inference thread.

It reads of a job only its command's flags (rkllmd.protocol.Command), never its name:

- *Order.* A ``background`` job (embed, rerank: indexing, which nobody waits for as they do for a
  spoken answer) gives way: the next job is the first ``generates`` job queued behind nothing but
  background jobs, unless one of those has been overtaken ``overtakes`` times already (then the
  first of them runs: none waits for ever). Background jobs keep their arrival order among
  themselves, as generations do among theirs. Any other job (load, unload, clear_cache) is a
  barrier that nothing passes, so "load, then generate" means what it says.
- *Places.* Background jobs and the others each have ``size`` places: a client that sends many
  batches at once (Open WebUI embeds a document's batches concurrently) fills only its own, and a
  generation is still queued rather than refused busy. A job that finds its places full may wait
  behind them (``may_hold``: a fleet's request, a broker's backlog), up to ``hold`` such jobs,
  which take places as they come free, in arrival order; else it is refused ``Busy``.

docs/EMBEDDINGS.md, "A long batch does not starve a voice request", says why.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

from rkllmd.commands import spec_of
from rkllmd.errors import Busy
from rkllmd.exchange import Exchange


class JobQueue:
    """The jobs waiting to run (``pending``) and those waiting for a place (``held``)."""

    def __init__(self, size: int, hold: int, overtakes: int) -> None:
        self.size, self.hold, self.overtakes = size, hold, overtakes
        self._pending: collections.deque[Exchange] = collections.deque()
        self._held: collections.deque[Exchange] = collections.deque()

    def __bool__(self) -> bool:
        """Whether a job is ready to run (a held one waits for a place first)."""
        return bool(self._pending)

    def depth(self) -> int:
        """Every waiting job, held ones included (the stats' ``queue_depth``)."""
        return len(self._pending) + len(self._held)

    def waiting(self) -> Iterator[Exchange]:
        return itertools.chain(self._pending, self._held)

    def add(self, job: Exchange, *, may_hold: bool) -> bool:
        """Queue ``job`` (False) or hold it behind its full places (True, ``may_hold``); raise Busy."""
        if self._fits(job):
            self._pending.append(job)
            return False
        if may_hold and len(self._held) < self.hold:
            self._held.append(job)
            return True
        kind = " embed and rerank jobs" if _background(job) else ""  # the words of the docs
        raise Busy(f"queue full ({self.size}{kind} waiting); try again later", queue_depth=len(self._pending))

    def remove(self, job: Exchange) -> None:
        """Take a cancelled job out (by identity: two records may be equal); a place comes free."""
        for jobs in (self._pending, self._held):
            for i, queued in enumerate(jobs):
                if queued is job:
                    del jobs[i]
                    self._refill()
                    return

    def drain(self) -> list[Exchange]:
        """Every waiting job, in arrival order within each deque, the queue left empty (at stop)."""
        jobs = [*self._pending, *self._held]
        self._pending.clear()
        self._held.clear()
        return jobs

    def take(self) -> Exchange | None:
        """The job to run now (the module docstring's order), out of the queue; None when empty."""
        if not self._pending:
            return None
        i = self._next()
        job = self._pending[i]
        del self._pending[i]
        self._refill()
        return job

    def _next(self) -> int:
        """The index of the next job: a generation overtakes the background jobs ahead of it."""
        for i, job in enumerate(self._pending):
            if _background(job):
                continue
            if i == 0 or not _generates(job):
                return 0  # at the head, or a barrier: arrival order
            passed = list(itertools.islice(self._pending, i))
            if any(p.run.overtaken >= self.overtakes for p in passed):
                return 0  # one of them has given way enough: the first of them runs
            for p in passed:
                p.run.overtaken += 1
            return i
        return 0  # background jobs only

    def _fits(self, job: Exchange) -> bool:
        background = _background(job)
        return sum(_background(j) == background for j in self._pending) < self.size

    def _refill(self) -> None:
        """Held jobs that a freed place now fits move into the queue, in arrival order."""
        held, self._held = self._held, collections.deque()
        for job in held:
            (self._pending if self._fits(job) else self._held).append(job)


def _background(job: Exchange) -> bool:
    spec = spec_of(job.command)
    return spec is not None and spec.background


def _generates(job: Exchange) -> bool:
    spec = spec_of(job.command)
    return spec is not None and spec.generates
