"""What a fleet does about boards that are gone: its availability, requests no live board serves,
and a dead board's kept session (docs/FLEET.md, "When a board dies").

- **Availability.** The leader (the online board with the lowest node id, rkllmd/fleet.py) keeps
  ``<base>/fleet/state`` retained: ``online`` and which boards are. It holds a second connection,
  the *presence* link (rkllmd/sidelink.py), whose Will sets that topic ``offline``: a Will cannot
  count boards, but only the leader's fires there, and when the last board dies it is the leader.
  A leader that dies while others live leaves ``offline`` for the moment the next one takes to
  say ``online`` again; every leader corrects an ``offline`` it sees while it runs.
- **Unserved models.** The presence link also subscribes ``generate/+`` (and every other command
  topic that may name a model: ``embed/+``, ``rerank/+``) in a share group of its
  own, so one leader gets a copy of every per-model request. One that no board serves (no online
  board has the model, nor a dead board whose kept session still takes its requests) has no other
  subscriber: the broker dropped it, and the leader answers it ``unknown_model``, once.
- **Takeover.** A board whose state went offline (or stopped) with a kept session and that is not
  back within ``fleet.takeover_grace_s`` has its session taken over by the leader
  (rkllmd/takeover.py). A dead board with a clean session lost what it had at the broker; it
  publishes its open requests (``<base>/node/<node>/open``: where each reply goes, never a prompt)
  while it runs, and the leader answers those ``interrupted`` after the grace.

Each board publishes ``<base>/node/<node>/serves`` (retained): its models, whether its session is
kept, and its client id (what a takeover connects with).

Threads: ``deliver`` and ``states_changed`` run on the ingress thread; the presence link's and a
takeover link's callbacks on paho's threads (they only inject into ingress, publish and ack);
grace timers on timer threads; ``start``, ``own_handed`` and ``stop`` on the main thread. One lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from rkllmd.bus import Bus
from rkllmd.commands import MODEL_TOPICS
from rkllmd.errors import Interrupted, RkllmdError, UnknownModel
from rkllmd.exchange import Exchange, Final
from rkllmd.journal import address_of
from rkllmd.protocol import Incoming, Topics
from rkllmd.settings import Settings
from rkllmd.sidelink import SideLink
from rkllmd.takeover import Takeover

log = structlog.get_logger("rkllmd.fleet")

OFFLINE = b'{"state":"offline","boards_online":0}'


@dataclass
class _Board:
    state: str = "unknown"
    models: set[str] = field(default_factory=set)
    kept: bool = False
    client_id: str | None = None
    ended: bool = False  # its kept session was taken over and ended: it takes no requests now
    down_since: float | None = None  # monotonic: when it was last seen go offline (or stopped)
    open: list[dict[str, Any]] = field(default_factory=list)  # a clean-session board's open requests


@dataclass(frozen=True)
class Refused(Incoming):
    """A request a fleet link received (on ``original_topic``) that is answered ``error``, never run:
    handed to the ingress thread, which reads its reply address as for any request."""

    original_topic: str = ""
    error: RkllmdError | None = None


class FleetWatch:
    """See the module docstring."""

    def __init__(self, settings: Settings, topics: Topics, bus: Bus, answer: Callable[[Final], None]) -> None:
        cfg = settings.fleet
        assert cfg.group is not None and topics.node is not None
        self.settings, self.topics, self.bus, self._answer = settings, topics, bus, answer
        self.group, self.node = cfg.group, topics.node
        self.inject: Callable[[Incoming], None] = lambda msg: None  # ingress.put, set by the daemon
        self.admit: Callable[[Incoming], Any] = lambda msg: None  # ingress.admit with its gate
        self._lock = threading.Lock()
        self._boards: dict[str, _Board] = {}
        self._leader = False
        self._presence: SideLink | None = None
        self._last_state: bytes | None = None
        self._timers: dict[str, threading.Timer] = {}
        self._taking: set[str] = set()
        self._handed = threading.Event()
        self._handed_ids: list[str] = []
        self._stopping = False
        self.refused_topic = f"{topics.base}/fleet/refused"  # never published: ingress hands Refused here

    # --- main thread ---------------------------------------------------------------------------

    def start(self) -> None:
        t = self.topics
        for kind in ("serves", "handed", "open"):
            self.bus.subscribe(t.node_topic("+", kind), qos=0)  # retained: sent again on subscribe
        self.bus.subscribe(t.fleet_state)

    def own_handed(self, timeout: float) -> list[str]:
        """The ids a leader took over from this board's session while it was away (retained for it),
        waited for up to ``timeout``; the record is cleared, so it is read once."""
        self._handed.wait(timeout)
        with self._lock:
            ids, self._handed_ids = self._handed_ids, []
        if self._handed.is_set():
            self.bus.publish(self.topics.node_topic(self.node, "handed"), b"", retain=True)
        return ids

    def stop(self) -> None:
        """A stop: the presence link goes with its Will (a last board leaves the fleet offline)."""
        with self._lock:
            self._stopping = True
            presence, self._presence = self._presence, None
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        if presence is not None:
            presence.close(with_will=True)

    # --- dispatcher / main thread ----------------------------------------------------------------

    def publish_serves(self, models: set[str]) -> None:
        """This board's models, session and client id, retained for every board."""
        mq = self.settings.mqtt
        body = {
            "models": sorted(models),
            "session": "clean" if mq.clean_start else "kept",
            "client_id": mq.client_id,
        }
        self.bus.publish_json(self.topics.node_topic(self.node, "serves"), body, retain=True)

    def publish_open(self, entries: list[dict[str, Any]]) -> None:
        """A clean-session board's open requests (where each reply goes, never a prompt), retained
        for the leader to answer if this board dies (the journal's thread, holding its lock)."""
        body = json.dumps({"open": entries}, separators=(",", ":")).encode()
        self.bus.publish(self.topics.node_topic(self.node, "open"), body, retain=True)

    # --- ingress thread ------------------------------------------------------------------------

    def handles(self, topic: str) -> bool:
        if topic in (self.topics.fleet_state, self.refused_topic):
            return True
        prefix = f"{self.topics.base}/node/"
        return topic.startswith(prefix) and topic.rsplit("/", 1)[-1] in ("serves", "handed", "open")

    def deliver(self, msg: Incoming) -> None:
        if isinstance(msg, Refused):
            self._refuse(msg)
            return
        try:
            obj = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if msg.topic == self.topics.fleet_state:
            if obj.get("state") == "online":
                return  # a leader's word (two may lead for a moment: neither answers the other)
            with self._lock:
                lead = self._leader
                self._last_state = None  # a dead leader's Will: the leader says online again
            if lead:
                self._publish_state()
            return
        node, kind = msg.topic[len(f"{self.topics.base}/node/") :].split("/", 1)
        with self._lock:
            b = self._boards.setdefault(node, _Board())
            if kind == "serves":
                b.models = {str(m) for m in obj.get("models") or []}
                b.kept = obj.get("session") == "kept"
                cid = obj.get("client_id")
                b.client_id = cid if isinstance(cid, str) else None
            elif kind == "open":
                entries = obj.get("open")
                b.open = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
            else:  # handed: a leader took this board's session over
                b.ended = bool(obj.get("ended"))
                if node == self.node:
                    self._handed_ids = [str(i) for i in obj.get("ids") or []]
        if kind == "handed" and node == self.node:
            self._handed.set()

    def states_changed(self, states: dict[str, str], leader: str | None) -> None:
        """Every board's state as the fleet knows it now, and who leads (after a state message)."""
        start: SideLink | None = None
        stop: SideLink | None = None
        with self._lock:
            now = time.monotonic()
            for name, state in states.items():
                b = self._boards.setdefault(name, _Board())
                b.state = state
                if state == "online":
                    b.ended, b.down_since = False, None
                    timer = self._timers.pop(name, None)
                    if timer is not None:
                        timer.cancel()
                elif b.down_since is None:
                    b.down_since = now
            lead = leader == self.node and not self._stopping
            if lead:  # every dead board's grace, counted from its death, whoever led then
                for name, b in self._boards.items():
                    if b.down_since is not None and name != self.node and name not in self._timers:
                        self._arm_locked(name, b.down_since + self.settings.fleet.takeover_grace_s - now)
            if lead and self._presence is None:
                start = self._presence = self._new_presence()
            elif not lead and self._presence is not None:
                stop, self._presence = self._presence, None
            self._leader = lead
        if start is not None:
            start.start()
        if stop is not None:
            stop.close()
        if lead:
            self._publish_state()

    # --- holding the lock ----------------------------------------------------------------------

    def _arm_locked(self, name: str, delay: float) -> None:
        b = self._boards[name]  # whether its session is kept may be known only later: checked at the end
        if not self.settings.fleet.takeover or b.ended or name in self._taking:
            return
        timer = threading.Timer(max(0.0, delay), self._grace_over, args=(name,))
        timer.daemon = True
        timer.name = f"takeover-grace-{name}"
        self._timers[name] = timer
        timer.start()

    def _served_locked(self, model: str) -> bool:
        """Whether a request on ``model``'s topic reaches a board: an online one, or a dead one
        whose kept session still takes its share (until it is taken over and ended)."""
        for b in self._boards.values():
            if model in b.models and (b.state == "online" or (b.kept and not b.ended)):
                return True
        return False

    def _new_presence(self) -> SideLink:
        mq = self.settings.mqtt
        link = SideLink(
            mq,
            f"{mq.client_id or 'rkllmd-' + self.node}-presence",
            name="presence",
            will=(self.topics.fleet_state, OFFLINE),
            on_message=self._unserved,
            on_connect=self._presence_up,
        )
        for command in MODEL_TOPICS:  # generate/+, embed/+, rerank/+
            link.subscribe(f"$share/{self.group}-unserved/{self.topics.group_request(command)}/+", 0)
        return link

    # --- the leader's view ---------------------------------------------------------------------

    def _publish_state(self) -> None:
        """The leader's ``online``, only once its presence link is up: its Will must be with the
        broker before the state it would correct, or a leader that dies at once would leave the
        fleet ``online`` with no board. Published under the lock, so two threads keep their order."""
        with self._lock:
            presence = self._presence
            if not self._leader or presence is None or not presence.connected.is_set():
                return
            online = sorted(n for n, b in self._boards.items() if b.state == "online")
            body = {"state": "online", "boards_online": len(online), "boards": online, "leader": self.node}
            data = json.dumps(body, separators=(",", ":")).encode()
            if data == self._last_state:
                return
            self._last_state = data
            self.bus.publish(self.topics.fleet_state, data, retain=True)

    def _presence_up(self, session_present: bool) -> None:
        """The presence link's thread: connected (again), its Will set; say online (again)."""
        with self._lock:
            self._last_state = None
        self._publish_state()

    # --- the presence link's thread -------------------------------------------------------------

    def _unserved(self, msg: mqtt.MQTTMessage) -> None:
        """A copy of a per-model request: answered here only if no board can get the original."""
        model = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if self._served_locked(model):
                return
            online = sorted(n for n, b in self._boards.items() if b.state == "online")
        log.info("a request on a model's topic no board serves", model=model, topic=msg.topic)
        err = UnknownModel(
            f"no board of fleet {self.group!r} serves model {model!r} now (boards online: "
            f"{', '.join(online) or 'none'}); configure it on a board or load it there"
        )
        self.inject(self._refused(msg, err))

    def _refused(self, msg: mqtt.MQTTMessage, err: RkllmdError) -> Refused:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None)
        return Refused(
            topic=self.refused_topic,
            payload=bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None) or None,
            correlation_data=bytes(corr) if corr is not None else None,
            received_at=time.monotonic(),
            original_topic=msg.topic,
            error=err,
        )

    # --- ingress thread: a refusal ---------------------------------------------------------------

    def _refuse(self, msg: Refused) -> None:
        orig = Incoming(
            topic=msg.original_topic,
            payload=msg.payload,
            response_topic=msg.response_topic,
            correlation_data=msg.correlation_data,
            received_at=msg.received_at,
        )
        admitted = self.admit(orig)
        if isinstance(admitted, Final) and msg.error is not None and admitted.code == UnknownModel.code:
            # The leader's own "unknown model; configured: <its models>" would hide the models
            # other boards serve: the fleet's answer says what is wrong.
            self._answer(Final.failed(admitted.request, msg.error))
        elif isinstance(admitted, Final):  # refused for its own reasons first: that answer it is
            self._answer(admitted)
        elif admitted is not None and msg.error is not None:
            self._answer(Final.failed(admitted, msg.error))

    # --- takeover (a timer thread, then the takeover's own thread and its link's) ----------------

    def _grace_over(self, name: str) -> None:
        with self._lock:
            self._timers.pop(name, None)
            b = self._boards.get(name)
            if not self._leader or self._stopping or b is None or b.state == "online" or b.ended:
                return
            if b.client_id is not None and not b.kept:  # a clean session: mosquitto deleted it all
                left, b.open = b.open, []
                if left:
                    self._answer_open_locked(name, left)
                return
            if not b.kept or not b.client_id or name in self._taking:
                return
            self._taking.add(name)
            b.ended = True  # from here its share is this board's to serve (unserved copies included)
            client_id, models = b.client_id, set(b.models)
        threading.Thread(
            target=self._take, args=(name, client_id, models), name=f"takeover-{name}", daemon=True
        ).start()

    def _answer_open_locked(self, name: str, left: list[dict[str, Any]]) -> None:
        """A dead board with a clean session: what it had taken is gone from the broker, and only
        its own list (``B/node/<name>/open``) tells; answer each `interrupted`, once (timer thread)."""
        ids = [str(e.get("id")) for e in left]
        base = self.topics.node_topic(name, "")
        self.bus.publish(base + "handed", json.dumps({"by": self.node, "ids": ids}).encode(), retain=True)
        self.bus.publish(base + "open", b'{"open":[]}', retain=True)  # answered: no later leader again
        for e in left:
            try:
                ex = Exchange(
                    command=str(e["cmd"]), topic=str(e["topic"]), id=str(e["id"]), address=address_of(e["to"])
                )
            except (KeyError, TypeError, ValueError):
                continue
            log.warning("answering a dead board's request", node=name, request_id=ex.id)
            self._answer(
                Final.failed(
                    ex,
                    Interrupted(
                        f"board {name!r} died while this request waited or ran there, and the broker "
                        "did not keep it (a clean session); send it again"
                    ),
                )
            )

    def _take(self, name: str, client_id: str, models: set[str]) -> None:
        """Takeover thread (rkllmd/takeover.py); a takeover the broker refused is tried again."""
        takeover = Takeover(
            self.settings, self.topics, self.node, name, client_id, models, self.inject, self._refused
        )
        reached = takeover.run()
        with self._lock:
            self._taking.discard(name)
            if not reached:  # the broker refused or never answered: try again after a grace
                self._boards[name].ended = False
                self._arm_locked(name, self.settings.fleet.takeover_grace_s)
        if not reached:
            log.error("could not take over a dead board's session; trying again", node=name)
