"""The inference loop: one thread owns the runtime; a bounded queue in front of it.

Threads:
- the *inference thread* (``InferenceLoop._run``) runs every job in the queue's order (generate, load,
  unload, clear_cache: its command's ``run``). It alone calls the runtime, except ``abort``.
- the *watchdog thread* (rkllmd/watchdog.py) ends generations that overrun their first-token,
  total or stall time limit by calling ``abort``, the one runtime call allowed from another
  thread. It sleeps until the running generation's next deadline, and with nothing running it
  does not wake at all.
- any thread may call ``submit`` and ``cancel``.

The queue's places and the order its jobs run in are rkllmd/jobqueue.py's (a generation runs
before the ``background`` jobs queued ahead of it, within ``Limits.overtakes``).

The loop never publishes: it hands events (``Token``, ``Final``, ``Stats``) to ``emit``, which
only enqueues them for the dispatcher thread (rkllmd/dispatch.py), so MQTT and plugin code never
runs on the inference thread. A job is the request's own record, an ``Exchange``; the loop
writes only its ``run`` state and its ``model``. What a job does is its command's
(``CommandSpec.run`` in rkllmd/commands/, called with the loop as its ``Engine``); the loop keeps the
queue, cancel, the watchdog, the timeouts, loading and the crash budget, and reads of a command
only whether it ``generates`` (a streamed run) or is ``cancellable`` (by id, unique by id in the
queue; a generating command always is), its queue also whether it is ``background``; a job is
watched once its run calls ``begin``.
A ``Stats`` event follows every change of the queue or of the running job (queued, refused busy,
started, finished, cancelled, dropped at shutdown), from whichever thread made the change; the
dispatcher rate-limits what it publishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from rkllmd.commands import spec_of
from rkllmd.errors import (
    Busy,
    NotFound,
    RequestError,
    RkllmdError,
    RuntimeCrashed,
    RuntimeFailure,
    ShuttingDown,
)
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.jobqueue import JobQueue
from rkllmd.jobs import DirectStream, timeout_error
from rkllmd.outcome import final_data, partial
from rkllmd.protocol import owned_by
from rkllmd.restarts import RestartBudget
from rkllmd.runtime.base import GenerateResult, Perf, Runtime
from rkllmd.runtime.models import ModelRegistry
from rkllmd.watchdog import Watchdog

log = structlog.get_logger("rkllmd.loop")


@dataclass(frozen=True)
class Stats:
    """A snapshot of the queue and counters, emitted on every change of the queue or running job."""

    stats: dict[str, Any]


Event = Token | Final | Stats


@dataclass(frozen=True)
class Limits:
    queue_size: int
    first_token_timeout_s: float
    total_timeout_s: float
    stall_timeout_s: float = 60.0
    abort_grace_s: float = 15.0
    restart_budget: int = 3
    restart_window_s: float = 600.0
    # Requests that find the queue full but may not be refused busy (submit's may_hold: a fleet's
    # requests, a broker's backlog or redelivery) wait behind it, up to this many (limits.backlog_max).
    hold: int = 0
    # Generations that may run before a queued background job before it runs (limits.background_overtakes).
    overtakes: int = 4


class InferenceLoop(Watchdog):
    """Runs jobs one at a time on its own thread; see the module docstring for the thread rules."""

    limits: Limits  # all of them; the watchdog reads its deadlines

    def __init__(
        self,
        registry: ModelRegistry,
        default_model: str,
        limits: Limits,
        emit: Callable[[Event], None],
        direct: DirectStream | None = None,
    ) -> None:
        """``emit`` receives every event, from whichever thread makes it: it must only enqueue.
        ``direct`` (the dispatcher) may publish a run's chunks from this thread (DirectStream)."""
        self.registry = registry
        self.default_model = default_model
        self.limits = limits
        self.emit = emit
        self.direct = direct
        self._cond = threading.Condition()
        self._queue = JobQueue(limits.queue_size, limits.hold, limits.overtakes)
        self._current: Exchange | None = None
        self._waiting = False  # the inference thread sleeps on _cond with nothing to do
        self._runtime: Runtime | None = None
        self._loaded: str | None = None
        self._accepting = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watch_cond = threading.Condition()  # the watchdog sleeps on it until a deadline
        self._stats: dict[str, Any] = {"requests": 0, "errors": 0, "completion_tokens": 0, "crashes": 0}
        self._budget = RestartBudget(limits.restart_budget, limits.restart_window_s)
        self._reload_after_crash: str | None = None

    # --- any thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    @property
    def loaded_model(self) -> str | None:
        return self._loaded

    def runtime_info(self) -> dict[str, Any] | None:
        rt = self._runtime
        return rt.describe() if rt is not None else None

    def queue_depth(self) -> int:
        with self._cond:
            return self._queue.depth()

    def submit(self, job: Exchange, *, may_hold: bool = False) -> None:
        """Queue a job or raise Busy / ShuttingDown / RequestError (an id in use) at once; never blocks.

        ``may_hold``: a full queue holds the job behind it (up to ``Limits.hold``) instead of Busy.
        Background jobs have places of their own (rkllmd/jobqueue.py)."""
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("rkllmd is shutting down; request not accepted")
            if _by_id(job) and (self._queued_locked(job.id) or self._running_locked(job.id)):
                raise RequestError(f"a request with id {job.id!r} is already queued or running")
            # Control jobs (load/unload/clear) may wait too but count against the generations'
            # bound, background jobs against their own: a flood of anything cannot grow memory
            # without limit.
            try:
                held = self._queue.add(job, may_hold=may_hold)
            except Busy:
                self._emit_stats_locked()  # a refusal re-states the full queue for late readers
                raise
            job.run.enqueued_at = time.monotonic()
            # An idle inference thread takes the job at once and says so (busy, running it): the
            # state of it queued would last microseconds and cost a stats publish per request.
            if held or not self._waiting:
                self._emit_stats_locked()
            self._cond.notify_all()

    def _queued_locked(self, request_id: str | None) -> Exchange | None:
        """The queued (or held) cancellable job with this id, or None (holding ``_cond``)."""
        return next((j for j in self._queue.waiting() if j.id == request_id and _by_id(j)), None)

    def _running_locked(self, request_id: str | None) -> Exchange | None:
        """The running job if it is the cancellable job with this id, else None (holding ``_cond``)."""
        cur = self._current
        return cur if cur is not None and cur.id == request_id and _by_id(cur) else None

    def cancel(self, request_id: str, *, owner: str | None = None) -> Literal["queued", "running"]:
        """Cancel a queued job (answered at once) or abort the running one; raise NotFound.

        ``owner``: the reply folder of an MQTT cancel (rkllmd.protocol.reply_folder); a job whose
        reply goes elsewhere is not found for it. None: a plugin's or rkllmd's own cancel."""
        with self._cond:
            job = self._queued_locked(request_id)
            cur = self._running_locked(request_id)
            for found in (job, cur):
                if found is not None and owner is not None and not owned_by(found.address, owner):
                    log.info("cancel refused: another reply folder's request", request_id=request_id)
                    raise NotFound(f"no queued or running request with id {request_id!r}")
            if job is not None:
                self._queue.remove(job)
                job.run.abort_reason = "cancelled"
                spec = spec_of(job.command)
                if spec is not None and spec.background:  # embed, rerank: as when cancelled running
                    self.emit(Final(job, "ok", {"model": job.model, "finish_reason": "cancelled"}))
                else:
                    self.emit(Final(job, "ok", final_data(job, "cancelled")))
                self._emit_stats_locked()
                return "queued"
            if cur is not None:
                if cur.run.abort_reason is None:
                    cur.run.abort_reason = "cancelled"
                    cur.run.aborted_at = time.monotonic()
                    self._wake_watchdog()
                self._abort_runtime()
                return "running"
        raise NotFound(f"no queued or running request with id {request_id!r}")

    def stop(self, grace_s: float) -> None:
        """Stop taking jobs, answer the queued ones, give the running one ``grace_s``, then abort."""
        with self._cond:
            self._accepting = False
            dropped = self._queue.drain()
            if dropped:
                self._emit_stats_locked()
            self._cond.notify_all()
        for job in dropped:
            self.emit(Final.failed(job, ShuttingDown("rkllmd stopped before this request ran")))
        deadline = time.monotonic() + grace_s
        while self._current is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._cond:
            cur = self._current
            if cur is not None and cur.run.abort_reason is None:
                cur.run.abort_reason = "shutdown"
                cur.run.aborted_at = time.monotonic()
                self._abort_runtime()
        self._stop.set()
        self._wake_watchdog()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=max(5.0, grace_s))
        self._watchdog.join(timeout=2.0)

    def _abort_runtime(self) -> None:
        rt = self._runtime
        if rt is not None:
            try:
                rt.abort()
            except Exception as exc:  # an abort that fails must not take the caller down
                log.warning("abort failed", error=str(exc))

    # --- inference thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._waiting = True
                    self._cond.wait()
                self._waiting = False
                job = self._queue.take()  # a held job takes the place it frees
                if job is None:  # stopping and nothing left
                    break
                self._current = job
                self._emit_stats_locked()  # busy, running = job.id, one fewer queued
            # Every log line written on this thread while the job runs (runtime included)
            # carries its request id.
            structlog.contextvars.bind_contextvars(request_id=job.id)
            try:
                self._do(job)
            except RkllmdError as exc:
                self._stats["errors"] += 1
                self.emit(Final.failed(job, exc, partial(job, _generates(job))))
            except Exception as exc:  # a bug must cost one request, never the loop
                log.exception("job failed unexpectedly", request_id=job.id)
                self._stats["errors"] += 1
                failure = RuntimeFailure(f"internal error: {exc}")
                self.emit(Final.failed(job, failure, partial(job, _generates(job))))
            finally:
                structlog.contextvars.unbind_contextvars("request_id")
                with self._cond:
                    self._current = None
                    self._emit_stats_locked()
            self._reload_crashed()
        self._unload()

    def _do(self, job: Exchange) -> None:
        spec = spec_of(job.command)
        if spec is None or spec.run is None:
            raise RkllmdError(f"unknown job kind {job.command}")
        self.emit(spec.run(job, self))

    # --- the Engine a command's job runs with (rkllmd.commands.Engine; inference thread) -------

    @property
    def counters(self) -> dict[str, Any]:
        return self._stats

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    def load(self, name: str) -> Runtime:
        return self._ensure_loaded(name)

    def unload(self) -> None:
        self._unload()

    def begin(self, job: Exchange) -> None:
        """A generation's run starts: the watchdog watches it from now."""
        job.run.started_at = time.monotonic()
        self._wake_watchdog()
        self._stats["requests"] += 1

    def survive(self, job: Exchange, run: Callable[[], GenerateResult]) -> GenerateResult:
        """``run()``, with the crash rules: a worker that died is forgotten and reloaded after the
        job (within the restart budget); the job ends by what made it die."""
        try:
            return run()
        except RuntimeCrashed as exc:
            name = job.model or self.default_model
            self._crashed(name)
            why = job.run.abort_reason
            if why is not None and why in ("timeout", "first_token_timeout", "stalled"):
                raise timeout_error(self.limits, why, "; the wedged runtime was killed") from exc
            if why is None:  # it died on its own: say whether it comes back
                raise RuntimeCrashed(f"{exc.message}; {self._budget.after_crash(name)}", **exc.data) from exc
            # Killed because it ignored the cancel (or the stop) asked for: the request ends as
            # asked, with what it produced; the crash is rkllmd's doing, not the runtime's.
            log.warning(
                "runtime killed after ignoring abort", reason=why, after=self._budget.after_crash(name)
            )
            return GenerateResult("aborted", Perf())

    def _ensure_loaded(self, name: str) -> Runtime:
        self.registry.require_model(name)
        if self._loaded == name and self._runtime is not None:
            return self._runtime
        self._budget.check(name)
        self._unload()
        log.info("loading model", model=name)
        t0 = time.monotonic()
        rt = self.registry.create(name)
        try:
            rt.open()
        except BaseException:
            rt.close()
            raise
        self._runtime, self._loaded = rt, name
        log.info("model loaded", model=name, seconds=round(time.monotonic() - t0, 2))
        return rt

    def _crashed(self, name: str) -> None:
        """The worker of ``name`` died: forget the runtime and schedule a reload (inference thread)."""
        self._stats["crashes"] += 1
        self._budget.crashed(name)
        rt = self._runtime
        self._runtime, self._loaded = None, None
        if rt is not None:
            rt.close()
        self._reload_after_crash = name

    def _reload_crashed(self) -> None:
        name, self._reload_after_crash = self._reload_after_crash, None
        if name is None or self._stop.is_set() or self._loaded is not None:
            return
        try:
            self._ensure_loaded(name)
        except RkllmdError as exc:
            log.error("reload after crash failed", model=name, code=exc.code, error=exc.message)

    def _unload(self) -> None:
        rt, name = self._runtime, self._loaded
        self._runtime, self._loaded = None, None
        if rt is not None:
            log.info("unloading model", model=name)
            rt.close()

    def _emit_stats_locked(self) -> None:
        """Queue a stats snapshot for the dispatcher (any thread, holding ``_cond``)."""
        self.emit(Stats(self.snapshot_locked()))

    def snapshot_locked(self) -> dict[str, Any]:
        cur = self._current
        return {
            **self._stats,
            "queue_depth": self._queue.depth(),
            "busy": cur is not None,
            "running": cur.id if cur is not None else None,
            "loaded_model": self._loaded,
        }

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return self.snapshot_locked()

    def restate_stats(self) -> None:
        """Queue the current stats for the dispatcher (any thread; main at startup). Through the
        loop's own events, so a change made meanwhile (the startup load ending) is never published
        before this older snapshot."""
        with self._cond:
            self._emit_stats_locked()


def _generates(job: Exchange) -> bool:
    """Whether ``job`` is a generation: its error reply carries the text it made (outcome.partial)."""
    spec = spec_of(job.command)
    return spec is not None and spec.generates


def _by_id(job: Exchange) -> bool:
    """Whether ``job`` is cancellable by id and unique by id in the queue (Command.cancellable)."""
    spec = spec_of(job.command)
    return spec is not None and (spec.generates or spec.cancellable)
