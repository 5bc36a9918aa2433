"""Wires the parts together: bus → ingress → inference loop → dispatcher → bus.

Threads:
- *main*: ``run`` connects, starts the others, waits for a stop, shuts down in order.
- *signals* (rkllmd/signals.py): a SIGTERM or SIGINT, taken by any thread: logs it and sets the
  stop the main thread waits for (the handler itself does nothing).
- *ingress* (rkllmd/ingress.py): admits every incoming message; plugin preprocessors and topic
  handlers.
- *inference* and *watchdog* (rkllmd/loop.py): run the jobs, one at a time.
- *dispatcher* (rkllmd/dispatch.py): stream chunks, final replies, stats; plugin routers.
docs/ARCHITECTURE.md follows one request through them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from rkllmd import __version__
from rkllmd.bus import Bus
from rkllmd.dispatch import Dispatcher
from rkllmd.exchange import Exchange
from rkllmd.fleet import Fleet
from rkllmd.ingress import Ingress, admit
from rkllmd.journal import Journal
from rkllmd.loop import InferenceLoop, Limits, Stats
from rkllmd.mqttconnect import ConnectCancelled
from rkllmd.plugins.host import PluginHost
from rkllmd.protocol import Incoming, Topics, model_facts
from rkllmd.runtime import registry
from rkllmd.runtime.base import TokenCounter
from rkllmd.sdnotify import Notifier
from rkllmd.settings import Settings
from rkllmd.signals import SignalWatch

log = structlog.get_logger("rkllmd")


class _PluginServices:
    """What the daemon lends to plugins (rkllmd.plugins.Services); any thread."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self.settings = daemon.settings
        self.topics = daemon.topics
        self._counters: dict[str, TokenCounter | None] = {}  # per model, made on first use
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, *, qos: int | None, retain: bool) -> None:
        self._d.bus.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int | None) -> Callable[[], None]:
        return self._d.bus.subscribe(topic, qos)

    def stats(self) -> dict[str, Any]:
        return {**self._d.loop.snapshot(), "connected": self._d.bus.connected.is_set()}

    def refresh_stats(self) -> None:
        self._d.dispatcher.put(Stats(self._d.loop.snapshot()))

    def cancel(self, request_id: str) -> str:
        return self._d.loop.cancel(request_id)

    def inject(self, msg: Incoming) -> None:
        self._d.ingress.put(msg)

    def count_tokens(self, model: str, text: str) -> int | None:
        """The model's own tokenizer, apart from the runtime, which only the inference thread calls."""
        with self._lock:
            if model not in self._counters:
                cfg = self.settings.models.get(model)
                self._counters[model] = registry.token_counter(cfg) if cfg is not None else None
            counter = self._counters[model]
        return counter.count(text) if counter is not None else None


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        fleet = settings.fleet
        self.topics = Topics(settings.mqtt.base_topic, fleet.node() if fleet.enabled else None)
        lim = settings.limits
        # In a fleet the broker may send a board only as many requests as it can queue and run:
        # a full board then receives nothing more (docs/FLEET.md, "Back-pressure").
        in_flight = (fleet.receive_maximum or lim.queue_size + 1) if fleet.enabled else None
        self.bus = Bus(
            settings.mqtt,
            will_topic=self.topics.state,
            will_payload=b'{"state":"offline"}',
            on_incoming=self._incoming,
            receive_maximum=in_flight,
        )
        journal_path = None
        if settings.state_dir is not None:
            journal_path = settings.state_dir / f"journal-{settings.mqtt.client_id}.jsonl"
        self.journal = Journal(journal_path, fsync=settings.journal_fsync)
        # The services reach the parts below only when a plugin calls them, after they exist.
        self.plugins = PluginHost.from_settings(_PluginServices(self))
        self.dispatcher = Dispatcher(
            self.bus, self.topics, self.plugins, self._info, self.journal, stream=settings.stream
        )
        self.loop = InferenceLoop(
            registry.build_registry(settings),
            settings.default,
            Limits(
                lim.queue_size,
                lim.first_token_timeout_s,
                lim.total_timeout_s,
                lim.stall_timeout_s,
                lim.abort_grace_s,
                lim.restart_budget,
                lim.restart_window_s,
                hold=lim.backlog_max,
                overtakes=lim.background_overtakes,
            ),
            self.dispatcher.put,
            direct=self.dispatcher,
        )
        self.fleet = (
            Fleet(settings, self.topics, self.bus, self.loop, self.dispatcher.put) if fleet.enabled else None
        )
        if self.fleet is not None:
            self.dispatcher.on_model_change = self.fleet.model_changed
        self.ingress = Ingress(
            settings,
            self.topics,
            self.plugins,
            self.loop,
            self.dispatcher,
            ack=self.bus.ack,
            journal=self.journal,
            fleet=self.fleet,
        )
        if self.fleet is not None:
            if (
                settings.mqtt.clean_start
            ):  # the broker keeps nothing of this board's: the leader may need this
                self.journal.on_open = self.fleet.watch.publish_open
            self.fleet.watch.inject = self.ingress.put
            self.fleet.watch.admit = lambda msg: admit(msg, self.ingress.gate)
        self._stop = threading.Event()  # set by the signals thread or request_stop()
        self.notifier = Notifier()  # systemd Type=notify; a no-op outside systemd
        self._live: tuple[Any, ...] = ()
        self._live_since = time.monotonic()

    def _incoming(self, msg: Incoming) -> None:
        """paho's network thread: hand the message on, nothing else."""
        self.ingress.put(msg)

    # --- main thread ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        # Once stopped, a late SIGTERM or Ctrl-C has nothing left to stop: ignored, so that it
        # does not turn this clean exit into a death by signal.
        with SignalWatch((signal.SIGTERM, signal.SIGINT), self._on_signal, then=signal.SIG_IGN):
            return self._serve()

    def _serve(self) -> int:
        self.ingress.recover(self.journal.recover())  # before any thread can write to the journal
        self.journal.tell()
        if self.fleet is not None and self.settings.mqtt.clean_start:
            log.warning(
                "fleet with a clean session: a board killed mid-request cannot have its requests sent "
                "again by mosquitto; set mqtt.clean_start = false (docs/FLEET.md)"
            )
        self.loop.start()
        if self.settings.preload:
            # Queued first: with a kept session the broker may send a full queue's worth of
            # requests the moment rkllmd connects, and the load must not be refused busy.
            self.loop.submit(Exchange(command="load", topic="", id="startup", model=self.settings.default))
        self.dispatcher.start()
        self.ingress.start()
        try:
            self.bus.connect(self._stop)
        except ConnectCancelled:
            log.info("rkllmd stopped before it reached the broker")
            self.loop.stop(0)
            return 0
        self.plugins.start()  # before requests arrive, so every request meets the preprocessors
        if self.fleet is not None:
            self.fleet.start()
        else:
            self.bus.subscribe(self.topics.request_wildcard)
        self.bus.wait_subscribed()  # a subscription refused by the broker's ACL ends startup here
        if self.fleet is not None:
            # What a leader took over from this board's session while it was away is not this
            # board's to answer again (docs/FLEET.md, "When a board dies").
            self.ingress.handed_over(self.fleet.watch.own_handed(1.0 if self.ingress.recovering() else 0.2))
        wait = self.settings.mqtt.redelivery_wait_s if self.bus.session_present else 0.0
        self.ingress.answer_unrecovered(wait)
        self.bus.publish_json(self.topics.state, {"state": "online"}, retain=True)
        self.dispatcher.publish_info()
        self.loop.restate_stats()  # in order with the loop's own stats (the startup load's)
        log.info(
            "rkllmd ready",
            version=__version__,
            base_topic=self.topics.base,
            default_model=self.settings.default,
            broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
        )
        self.notifier.ready(f"serving {self.topics.base}/request/# on {self.settings.mqtt.host}")
        if self.fleet is not None:
            log.info("serving as a board of a fleet", group=self.fleet.group, node=self.fleet.node)
        self.notifier.start_watchdog(self._liveness)
        # No timer: the signals thread sets the event, whichever thread the kernel gave the signal.
        self._stop.wait()
        self.shutdown()
        return 0

    def _on_signal(self, signum: int) -> None:
        """The signals thread: SIGTERM or SIGINT (also one that came while stopping already)."""
        log.info("stop requested", signal=signal.Signals(signum).name, stopping=self._stop.is_set())
        self._stop.set()

    def request_stop(self) -> None:
        """Any thread: stop as a signal would."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop taking requests, end the current one within the grace period, say ``stopped``."""
        self.notifier.stopping()
        self.ingress.stopping = True
        self.loop.stop(self.settings.limits.shutdown_grace_s)
        self.ingress.stop()
        self.dispatcher.put(Stats(self.loop.snapshot()))
        self.dispatcher.stop()
        self.plugins.stop()
        if self.fleet is not None:
            self.fleet.watch.stop()
        self.bus.publish_json(self.topics.state, {"state": "stopped"}, retain=True)
        self.bus.wait_published(5)
        self.bus.disconnect()
        self.journal.close()
        self.notifier.close()
        log.info("rkllmd stopped")

    def _liveness(self) -> str | None:
        """For the systemd watchdog (sd-watchdog thread): None while alive, else what is wrong.

        Wedged means a thread of ours died, the loop's lock cannot be taken (then this blocks and
        the pings stop with it), or one job has run far past every limit the loop itself enforces.
        """
        for t in (self.ingress.thread, self.dispatcher.thread):
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

    def _info(self) -> dict[str, Any]:
        """The retained info topic (dispatcher and main thread)."""
        loaded, default = self.loop.loaded_model, self.settings.default
        return {
            "version": __version__,
            "protocol": 1,
            "base_topic": self.topics.base,
            "node": self.topics.node,
            "group": self.settings.fleet.group,
            "default_model": default,
            "loaded_model": loaded,
            "runtime": self.loop.runtime_info(),
            "models": [m.brief() for m in model_facts(self.settings.models, loaded, default)],
        }


def serve(settings: Settings) -> int:
    """Run the daemon in the foreground; returns the exit code."""
    daemon = Daemon(settings)
    started = time.monotonic()
    code = daemon.run()
    log.debug("uptime", seconds=round(time.monotonic() - started, 1))
    return code
