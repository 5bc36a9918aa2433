"""Wires the parts together: bus → ingress → inference loop → dispatcher → bus.

Threads:
- *main*: ``run`` connects, starts the others, waits for a stop signal, shuts down in order.
- *ingress*: parses and validates every incoming message and queues jobs or answers errors;
  runs plugin preprocessors and the handlers of plugin topics.
- *dispatcher*: turns loop events into stream chunks, final replies and stats; runs plugin routers.
  It publishes ``<base>/stats`` on every change the loop reports, at most once per
  ``STATS_MIN_INTERVAL_S`` (``StatsThrottle``: leading and trailing, so the last state always goes
  out); a pending trailing publish is the only thing that gives its queue wait a timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog

from rkllmd import __version__, plugins, protocol
from rkllmd.bus import Bus
from rkllmd.errors import ConfigError, RequestError, RkllmdError, ShuttingDown, UnknownCommand
from rkllmd.loop import DoneEvent, ErrorEvent, Event, InferenceLoop, Job, Limits, StatsEvent, TokenEvent
from rkllmd.protocol import Envelope, Incoming, ReplyTo, Topics
from rkllmd.runtime.factory import build_registry
from rkllmd.sdnotify import Notifier
from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd")

# The stats topic is retained and read by dashboards (the Home Assistant sensors); a burst of
# changes (a queue filling up, short jobs back to back) is folded into one publish per interval.
STATS_MIN_INTERVAL_S = 0.25


@dataclass
class Context:
    """The one object the parts share instead of module globals."""

    settings: Settings
    topics: Topics
    loop: InferenceLoop
    bus: Bus


@dataclass
class _Reply(ReplyTo):
    """A reply address that also carries the request as plugins see it."""

    request: plugins.Request = field(default_factory=lambda: plugins.Request(command="", topic=""))
    publish: bool = True  # False for a plugins.LocalMessage: routers only, nothing over MQTT


@dataclass(frozen=True)
class _RouteFinal:
    """A final reply sent from the ingress thread, queued so routers run on the dispatcher."""

    final: plugins.Final


class _PluginServices:
    """What the daemon lends to plugins (rkllmd.plugins.Services)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self.settings = daemon.settings
        self.topics = daemon.topics
        self._tokens = plugins.TokenCounter(daemon.settings)

    def publish(self, topic: str, payload: bytes, *, qos: int | None, retain: bool) -> None:
        self._d.bus.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int | None) -> Callable[[], None]:
        return self._d.bus.subscribe(topic, qos)

    def stats(self) -> dict[str, Any]:
        return {**self._d.loop.snapshot(), "connected": self._d.bus.connected.is_set()}

    def refresh_stats(self) -> None:
        self._d.loop.events.put(StatsEvent(self._d.loop.snapshot()))

    def cancel(self, request_id: str) -> str:
        return self._d.loop.cancel(request_id)

    def inject(self, msg: Incoming) -> None:
        self._d._inbox.put(msg)

    def count_tokens(self, model: str, text: str) -> int | None:
        return self._tokens.count(model, text)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt.base_topic)
        lim = settings.limits
        self.loop = InferenceLoop(
            build_registry(settings),
            settings.default,
            Limits(
                lim.queue_size,
                lim.first_token_timeout_s,
                lim.total_timeout_s,
                lim.stall_timeout_s,
                lim.abort_grace_s,
                lim.restart_budget,
                lim.restart_window_s,
            ),
        )
        self._inbox: queue.Queue[Incoming | None] = queue.Queue()
        self.bus = Bus(
            settings.mqtt,
            will_topic=self.topics.state,
            will_payload=b'{"state":"offline"}',
            on_incoming=self._inbox.put,
        )
        self.ctx = Context(settings, self.topics, self.loop, self.bus)
        self._stop = threading.Event()
        self.notifier = Notifier()  # systemd Type=notify; a no-op outside systemd
        self._live: tuple[Any, ...] = ()
        self._live_since = time.monotonic()
        self._stopping = False
        self._inflight: dict[str, Job] = {}
        self._inflight_lock = threading.Lock()
        self._loaded_runtime: dict[str, Any] = {}
        self._ingress = threading.Thread(target=self._ingress_main, name="ingress", daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatch_main, name="dispatcher", daemon=True)
        self._stats_gate = StatsThrottle(STATS_MIN_INTERVAL_S)  # dispatcher thread only
        self.plugins = plugins.PluginHost.from_settings(_PluginServices(self))

    # --- main thread ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.loop.start()
        self._dispatcher.start()
        self._ingress.start()
        self.bus.connect()
        self.plugins.start()  # before requests arrive, so every request meets the preprocessors
        self.bus.subscribe(self.topics.request_wildcard)
        self.bus.wait_subscribed()  # a subscription refused by the broker's ACL ends startup here
        self.bus.publish_json(self.topics.state, {"state": "online"}, retain=True)
        self._publish_info()
        self.bus.publish_json(self.topics.stats, self._stats(self.loop.snapshot()), retain=True)
        if self.settings.preload:
            self.loop.submit(Job(kind="load", id="startup", model=self.settings.default, context=None))
        log.info(
            "rkllmd ready",
            version=__version__,
            base_topic=self.topics.base,
            default_model=self.settings.default,
            broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
        )
        self.notifier.ready(f"serving {self.topics.base}/request/# on {self.settings.mqtt.host}")
        self.notifier.start_watchdog(self._liveness)
        while not self._stop.wait(0.5):
            pass
        self.shutdown()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """Stop taking requests, end the current one within the grace period, say ``stopped``."""
        self.notifier.stopping()
        self._stopping = True
        grace = self.settings.limits.shutdown_grace_s
        self.loop.stop(grace)
        self._inbox.put(None)
        self._ingress.join(timeout=5)
        self.loop.events.put(StatsEvent(self.loop.snapshot()))
        self.loop.events.put(_END)  # type: ignore[arg-type]
        self._dispatcher.join(timeout=10)
        self.plugins.stop()
        self.bus.publish_json(self.topics.state, {"state": "stopped"}, retain=True)
        self.bus.wait_published(5)
        self.bus.disconnect()
        self.notifier.close()
        log.info("rkllmd stopped")

    def _liveness(self) -> str | None:
        """For the systemd watchdog (sd-watchdog thread): None while alive, else what is wrong.

        Wedged means a thread of ours died, the loop's lock cannot be taken (then this blocks and
        the pings stop with it), or one job has run far past every limit the loop itself enforces.
        """
        for t in (self._ingress, self._dispatcher):
            if not t.is_alive():
                return f"the {t.name} thread died"
        snap = self.loop.snapshot()
        key = (snap.get("running"), snap.get("requests"), snap.get("errors"))
        now = time.monotonic()
        if key != self._live:
            self._live, self._live_since = key, now
        lim = self.settings.limits
        wedged_after = lim.total_timeout_s + lim.abort_grace_s + max(5.0, lim.shutdown_grace_s)
        if snap.get("running") is not None and now - self._live_since > wedged_after:
            return f"job {snap.get('running')} has run {now - self._live_since:.0f} s, past every limit"
        return None

    # --- ingress thread ------------------------------------------------------------------------

    def _ingress_main(self) -> None:
        while True:
            msg = self._inbox.get()
            if msg is None:
                # Anything that arrived after the stop still gets an answer.
                while True:
                    try:
                        late = self._inbox.get_nowait()
                    except queue.Empty:
                        return
                    if late is not None:
                        self._handle_guarded(late)
            self._handle_guarded(msg)

    def _handle_guarded(self, msg: Incoming) -> None:
        """Nothing a message does may end the ingress thread: every later request depends on it."""
        try:
            self._handle_safely(msg)
        except Exception:
            log.exception("ingress failed on a message", topic=msg.topic)

    def _handle_safely(self, msg: Incoming) -> None:
        if self.plugins.handles(msg.topic):
            self.plugins.deliver(msg)
            return
        bad_response_topic = _check_response_topic(msg.response_topic)
        if bad_response_topic is not None:
            msg = dataclasses.replace(msg, response_topic=None)
        reply = _Reply(topic=msg.response_topic or self.topics.response("error"))
        reply.request = plugins.Request(command="", topic=msg.topic)
        reply.publish = not isinstance(msg, plugins.LocalMessage)
        reply.correlation_data = msg.correlation_data
        try:
            if bad_response_topic is not None:
                with contextlib.suppress(UnknownCommand):
                    command, topic_model = self.topics.parse_request_topic(msg.topic)
                    reply.topic = self.topics.response(command)
                    reply.request.command, reply.request.topic_model = command, topic_model
                # the id and transaction are still echoed; a reply_to does not replace the bad topic
                _address_from(self._address_of_refused(msg), reply, True)
                raise RequestError(bad_response_topic)
            self._handle(msg, reply)
        except RkllmdError as exc:
            log.info(
                "request refused",
                topic=msg.topic,
                code=exc.code,
                error=exc.message,
                request_id=reply.request_id,
            )
            self._reply(reply, protocol.error(exc))
        except Exception as exc:  # the daemon never dies on input
            log.exception("request handling failed", topic=msg.topic)
            self._reply(reply, protocol.error(RkllmdError(f"internal error: {exc}")))

    def _handle(self, msg: Incoming, reply: _Reply) -> None:
        try:
            command, topic_model = self.topics.parse_request_topic(msg.topic)
        except UnknownCommand:
            if msg.response_topic is None:
                reply.topic = self.topics.response("error")
            _address_from(self._address_of_refused(msg), reply, msg.response_topic is not None)
            raise
        if msg.response_topic is None:
            reply.topic = self.topics.response(command)
        preq = reply.request
        # Known before the payload is read, so routers see the command of a refused payload too.
        preq.command, preq.topic_model = command, topic_model
        try:
            obj = protocol.decode_payload(msg.payload, command, self.settings.limits.max_payload_bytes)
        except RkllmdError:
            _address_from(self._address_of_refused(msg), reply, msg.response_topic is not None)
            raise
        _address_from(obj, reply, msg.response_topic is not None)
        preq.payload, preq.original = obj, dict(obj)
        preq.id = reply.request_id
        preq = reply.request = self.plugins.preprocess(preq)
        obj = preq.payload
        _address_from(obj, reply, msg.response_topic is not None)
        req = protocol.validate(command, obj)
        preq.id = req.id
        if self._stopping:
            raise ShuttingDown("rkllmd is shutting down; request not accepted")
        if isinstance(req, protocol.GenerateRequest):
            self._generate(req, topic_model, reply)
        elif command == "cancel":
            self._cancel(req, reply)
        elif command == "models":
            self._reply(reply, protocol.ok(self._models()))
        else:
            model = getattr(req, "model", None)
            if model is not None:
                self.loop.registry.check(model)
            if command == "load" and model is None:
                model = self.settings.default
            job_id = req.id or protocol.new_request_id()
            reply.request_id = job_id
            reply.request.id, reply.request.model = job_id, model
            self.loop.submit(Job(kind=command, id=job_id, model=model, context=reply))  # type: ignore[arg-type]

    def _address_of_refused(self, msg: Incoming) -> dict[str, Any]:
        """What a payload refused before validation says about where its reply goes (bounded)."""
        return protocol.read_address(msg.payload, self.settings.limits.max_payload_bytes)

    def _generate(self, req: protocol.GenerateRequest, topic_model: str | None, reply: _Reply) -> None:
        model = req.model or topic_model or self.settings.default
        self.loop.registry.check(model)
        cfg = self.settings.models[model]
        lim = self.settings.limits
        max_tokens = req.max_tokens or cfg.max_new_tokens or lim.max_tokens
        if max_tokens > lim.max_tokens_cap:
            raise RequestError(f"max_tokens {max_tokens} is over the limit of {lim.max_tokens_cap}")
        job_id = req.id or protocol.new_request_id()
        reply.request_id = job_id
        reply.request.id, reply.request.model = job_id, model
        job = Job(
            kind="generate",
            id=job_id,
            model=model,
            inp=req.to_input(max_tokens),
            stream=req.stream and reply.publish,
            context=reply,
        )
        with self._inflight_lock:
            if job_id in self._inflight:
                raise RequestError(f"a request with id {job_id!r} is already queued or running")
            self._inflight[job_id] = job
        try:
            self.loop.submit(job)
        except RkllmdError:
            with self._inflight_lock:
                self._inflight.pop(job_id, None)
            raise
        log.info("request queued", request_id=job_id, model=model, queue_depth=self.loop.queue_depth())

    def _cancel(self, req: protocol._Req, reply: ReplyTo) -> None:
        if req.id is None:
            raise RequestError("cancel needs the id of the request to cancel")
        reply.request_id = req.id
        where = self.loop.cancel(req.id)  # NotFound is answered like any refusal
        log.info("cancel", request_id=req.id, was=where)
        self._reply(reply, protocol.ok({"cancelled": req.id, "was": where}))

    def _models(self) -> dict[str, Any]:
        loaded = self.loop.loaded_model
        out = []
        for name, cfg in self.settings.models.items():
            out.append(
                {
                    "name": name,
                    "runtime": cfg.runtime,
                    "description": cfg.description,
                    "context_length": cfg.max_context_len,
                    "loaded": name == loaded,
                    "default": name == self.settings.default,
                }
            )
        return {"models": out, "loaded": loaded, "default": self.settings.default}

    # --- dispatcher thread ---------------------------------------------------------------------

    def _dispatch_main(self) -> None:
        gate = self._stats_gate
        while True:
            # Blocks without a timeout unless a trailing stats publish is pending: no idle wakeups.
            try:
                ev = self.loop.events.get(timeout=gate.wait_s(time.monotonic()))
            except queue.Empty:
                ev = None
            if ev is _END:
                with contextlib.suppress(Exception):
                    self._publish_stats(gate.due(time.monotonic(), force=True))
                return
            try:
                if ev is not None:
                    self._dispatch(ev)
                self._publish_stats(gate.due(time.monotonic()))
            except Exception:  # a failed publish must not stop the replies that follow
                log.exception("dispatch failed")

    def _dispatch(self, ev: Event | _RouteFinal) -> None:
        if isinstance(ev, _RouteFinal):
            self.plugins.route(ev.final)
            return
        if isinstance(ev, TokenEvent):
            if ev.job.stream:
                self.bus.publish(
                    self.topics.stream(ev.job.id),
                    protocol.stream_chunk(ev.job.id, ev.seq, ev.delta),
                    droppable=True,
                )
                self.bus.publish(self.topics.stream_text(ev.job.id), ev.delta.encode(), droppable=True)
            if isinstance(ev.job.context, _Reply) and self.plugins.has_routers:
                self.plugins.route(plugins.Token(ev.job.context.request, ev.seq, ev.delta))
            return
        if isinstance(ev, StatsEvent):
            self._publish_stats(self._stats_gate.offer(ev.stats, time.monotonic()))
            return
        job = ev.job
        reply: ReplyTo | None = job.context
        if isinstance(ev, DoneEvent):
            env = protocol.ok(ev.data)
            finish = str(ev.data.get("finish_reason", "stop"))
            log.info(
                "request done",
                request_id=job.id,
                kind=job.kind,
                finish_reason=ev.data.get("finish_reason"),
                tokens=ev.data.get("usage", {}).get("completion_tokens"),
                ttft_ms=ev.data.get("timings", {}).get("ttft_ms"),
            )
        else:
            assert isinstance(ev, ErrorEvent)
            env = protocol.error(ev.error, ev.data)
            finish = "error"
            log.warning(
                "request failed", request_id=job.id, kind=job.kind, code=ev.error.code, error=ev.error.message
            )
        if job.kind == "generate":
            with self._inflight_lock:
                self._inflight.pop(job.id, None)
            if job.stream:
                self.bus.publish(
                    self.topics.stream(job.id), protocol.stream_end(job.id, job.seq, finish, env.status)
                )
                self.bus.publish(self.topics.stream_text(job.id), b"\n")
        if job.kind in ("load", "unload"):
            self._publish_info()
        if reply is not None:
            self._reply(reply, env)

    def _reply(self, reply: ReplyTo, env: Envelope) -> None:
        if not isinstance(reply, _Reply) or reply.publish:
            self.bus.publish(
                reply.topic,
                env.to_payload(reply),
                correlation_data=reply.correlation_data,
                content_type="application/json",
            )
        if isinstance(reply, _Reply) and self.plugins.has_routers:
            preq = reply.request
            preq.id = preq.id or reply.request_id
            final = plugins.Final(preq, env.status, env.data, env.code, env.error)
            if threading.current_thread() is self._dispatcher:
                self.plugins.route(final)
            else:  # routers run on the dispatcher thread only
                self.loop.events.put(_RouteFinal(final))  # type: ignore[arg-type]

    def _publish_stats(self, stats: dict[str, Any] | None) -> None:
        """Publish a snapshot the throttle let through, retained (dispatcher thread); None: nothing."""
        if stats is not None:
            self.bus.publish_json(self.topics.stats, self._stats(stats), retain=True)

    def _stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The stats topic: the loop's counters, plus what plugins contribute under ``plugins``."""
        extra = self.plugins.stats()
        return {**stats, "plugins": extra} if extra else stats

    def _publish_info(self) -> None:
        info = {
            "version": __version__,
            "protocol": 1,
            "base_topic": self.topics.base,
            "default_model": self.settings.default,
            "loaded_model": self.loop.loaded_model,
            "runtime": self.loop.runtime_info(),
            "models": [
                {"name": n, "runtime": c.runtime, "description": c.description}
                for n, c in self.settings.models.items()
            ],
        }
        self.bus.publish_json(self.topics.info, info, retain=True)


_END = object()


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


def _check_response_topic(topic: str | None) -> str | None:
    """Why a v5 Response Topic must not be used (brokers pass on wildcards and $-topics), or None."""
    if topic is None:
        return None
    try:
        protocol.check_publish_topic(topic, "the Response Topic")
    except ValueError as exc:
        return str(exc)
    return None


def _address_from(obj: dict[str, Any], reply: ReplyTo, has_v5_topic: bool) -> None:
    """Best effort: take reply_to, id and transaction from a request even before it validates,
    so that a request with a wrong field still gets its error where the sender listens. Each is
    taken only if it is valid on its own (a transaction only if a reply can carry it back)."""
    if "transaction" in obj and protocol.echoable(obj["transaction"]):
        reply.transaction = obj["transaction"]
        reply.has_transaction = True
    rid = obj.get("id")
    if isinstance(rid, str) and protocol.ID_RE.match(rid):
        reply.request_id = rid
    rt = obj.get("reply_to")
    if not has_v5_topic and isinstance(rt, str):
        try:
            protocol.check_publish_topic(rt, "reply_to")
        except ValueError:
            return
        reply.topic = rt


def serve(settings: Settings) -> int:
    """Run the daemon in the foreground; returns the exit code."""
    try:
        daemon = Daemon(settings)
    except ConfigError:
        raise
    started = time.monotonic()
    code = daemon.run()
    log.debug("uptime", seconds=round(time.monotonic() - started, 1))
    return code
