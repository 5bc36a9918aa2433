"""Fleet mode: several boards behind one request topic, with the broker as the only coordinator.

Each board subscribes the group's request topics as MQTT 5 shared subscriptions
(``$share/<group>/<base>/request/+`` and ``.../generate/<model>``, ``embed/<model>``, ``rerank/<model>``
for its own models: every command whose topic may name a model), so the broker
gives each request to one board; its own topics live under ``<base>/node/<node>/`` (state, info,
stats, and requests meant for it alone). What needs every board is passed on over the broker:

- a cancel the broker gave to a board that does not run the request is passed on to every board
  (``<base>/fleet/cancel``); each reports whether it had it, and the board that got the cancel
  answers once: with the finder's outcome, or ``not_found`` when every board said no;
- every board reads the others' state and stats; the board with the lowest online node id (the
  leader) publishes the group's view, ``<base>/fleet/stats``.

Threads: ``deliver`` and ``pass_on_cancel`` run on the ingress thread; ``model_changed`` on the
dispatcher thread; a cancel's timeout on a timer thread. One lock guards what they share. Answers
go through the dispatcher's queue like every other reply. docs/FLEET.md explains the whole design.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from rkllmd import protocol
from rkllmd.bus import Bus
from rkllmd.commands import MODEL_TOPICS
from rkllmd.errors import NotFound
from rkllmd.exchange import Exchange, Final
from rkllmd.fleetwatch import FleetWatch
from rkllmd.loop import InferenceLoop
from rkllmd.protocol import Incoming, Topics
from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd.fleet")


@dataclass
class _PendingCancel:
    """A cancel this board received and passed on: who has reported, until when it waits."""

    ex: Exchange
    reported: set[str] = field(default_factory=set)
    timer: threading.Timer | None = None


@dataclass
class Member:
    """What this board knows of one board of the group (itself included), from its topics."""

    state: str = "unknown"
    stats: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """This board's part in a fleet; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        bus: Bus,
        loop: InferenceLoop,
        answer: Callable[[Final], None],
    ) -> None:
        """``answer`` hands a cancel's final reply to the dispatcher (it only enqueues)."""
        cfg = settings.fleet
        assert cfg.group is not None and topics.node is not None
        self.settings, self.topics, self.bus, self.loop, self._answer = settings, topics, bus, loop, answer
        self.group, self.node = cfg.group, topics.node
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        self._pending: dict[str, _PendingCancel] = {}
        self._model_subs: dict[str, list[Callable[[], None]]] = {}  # a model: its topics' unsubscribes
        self._last_view: bytes | None = None
        self._state_prefix = f"{topics.base}/node/"  # where every board's state and stats live
        # availability, unserved models, a dead board's session (rkllmd/fleetwatch.py)
        self.watch = FleetWatch(settings, topics, bus, answer)

    # --- main thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe the group's requests, this board's own, the other boards' topics, cancels."""
        t = self.topics
        share = f"$share/{self.group}/"
        self.bus.subscribe(share + t.group_request("+"))
        self.bus.subscribe(t.own_request_wildcard)
        for kind in ("state", "stats"):
            # QoS 0: retained, sent again on every subscribe; at QoS 1 a dead board's kept session
            # would fill with the others' stats, up to the broker's limit, and crowd out requests
            self.bus.subscribe(t.node_topic("+", kind), qos=0)
        self.bus.subscribe(t.fleet_cancel)
        self.bus.subscribe(t.fleet_cancel_report)
        self.watch.start()
        self.model_changed()

    # --- dispatcher thread (and main, from start) ---------------------------------------------

    def model_changed(self) -> None:
        """Subscribe each model's own topic where this board serves it, unsubscribe the rest.

        ``fleet.models = "configured"``: every configured model; ``"loaded"``: only the loaded one.
        """
        if self.settings.fleet.models == "configured":
            wanted = set(self.settings.models)
        else:
            loaded = self.loop.loaded_model
            wanted = {loaded} if loaded is not None else set()
        with self._lock:
            have = set(self._model_subs)
            for name in have - wanted:
                for unsubscribe in self._model_subs.pop(name):
                    unsubscribe()
                log.info("left a model's topics", model=name)
            for name in sorted(wanted - have):
                # every command that may name a model, whatever the model's kind: a request of the
                # wrong kind is answered wrong_model_kind by the board, not unknown_model
                topics = [f"$share/{self.group}/{self.topics.group_request(c)}/{name}" for c in MODEL_TOPICS]
                self._model_subs[name] = [self.bus.subscribe(topic) for topic in topics]
                log.info("serving a model's topics", model=name, topics=topics)
        self.watch.publish_serves(wanted)

    # --- ingress thread ------------------------------------------------------------------------

    def handles(self, topic: str) -> bool:
        t = self.topics
        if topic in (t.fleet_cancel, t.fleet_cancel_report) or self.watch.handles(topic):
            return True
        return topic.startswith(self._state_prefix) and topic.rsplit("/", 1)[-1] in ("state", "stats")

    def deliver(self, msg: Incoming) -> None:
        """A fleet message: another board's state or stats, a passed-on cancel, a cancel report."""
        if self.watch.handles(msg.topic):
            self.watch.deliver(msg)
            return
        try:
            obj = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            log.warning("ignoring a fleet message that is not JSON", topic=msg.topic)
            return
        if not isinstance(obj, dict):
            return
        t = self.topics
        if msg.topic == t.fleet_cancel:
            self._cancel_here(obj)
        elif msg.topic == t.fleet_cancel_report:
            self._report(obj)
        else:
            node, kind = msg.topic[len(self._state_prefix) :].split("/", 1)
            self._member(node, kind, obj)

    def pass_on_cancel(self, ex: Exchange) -> None:
        """A cancel for a request not on this board: ask every other board, answer once."""
        assert ex.id is not None
        others = self._online() - {self.node}
        if not others:
            self._answer(self._not_found(ex))
            return
        key = uuid.uuid4().hex
        pending = _PendingCancel(ex)
        timer = threading.Timer(self.settings.fleet.cancel_timeout_s, self._timed_out, args=(key,))
        timer.daemon = True
        timer.name = "fleet-cancel-timeout"
        pending.timer = timer
        with self._lock:
            self._pending[key] = pending
        timer.start()
        # The cancel's reply folder goes along: the board that runs the request checks it is the
        # request's (rkllmd/ingress.py); the topic is rkllmd's own, no user may publish it.
        owner = protocol.reply_folder(ex.address.topic) if ex.address is not None else None
        self.bus.publish_json(
            self.topics.fleet_cancel, {"key": key, "origin": self.node, "id": ex.id, "owner": owner}
        )

    def _cancel_here(self, obj: dict[str, Any]) -> None:
        """Every board: cancel the request if it is here, and report either way."""
        key, origin, rid = obj.get("key"), obj.get("origin"), obj.get("id")
        if not isinstance(key, str) or not isinstance(rid, str) or origin == self.node:
            return
        report: dict[str, Any] = {"key": key, "node": self.node, "found": False}
        try:
            owner = obj.get("owner")
            report["was"] = self.loop.cancel(rid, owner=owner if isinstance(owner, str) else None)
            report["found"] = True
            log.info("cancel passed on by another board", request_id=rid, origin=origin, was=report["was"])
        except NotFound:
            pass
        self.bus.publish_json(self.topics.fleet_cancel_report, report)

    def _report(self, obj: dict[str, Any]) -> None:
        """The board that got the cancel: one board's report; answer when it is decided."""
        key, node = obj.get("key"), obj.get("node")
        if not isinstance(key, str) or not isinstance(node, str):
            return
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                return
            pending.reported.add(node)
            done = bool(obj.get("found")) or (self._online_locked() - {self.node}) <= pending.reported
            if done:
                self._pending.pop(key)
        if not done:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        ex = pending.ex
        if obj.get("found"):
            assert ex.id is not None  # a cancel is admitted with the id it cancels
            self._answer(Final(ex, "ok", protocol.cancel_data(ex.id, str(obj.get("was")), node)))
        else:
            self._answer(self._not_found(ex))

    def _timed_out(self, key: str) -> None:
        """Timer thread: not every board reported in time; no report found it, so answer not_found."""
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is not None:
            log.warning("not every board answered a passed-on cancel", request_id=pending.ex.id)
            self._answer(self._not_found(pending.ex))

    def _not_found(self, ex: Exchange) -> Final:
        err = NotFound(f"no board of group {self.group!r} has a queued or running request with id {ex.id!r}")
        log.info("cancel", request_id=ex.id, was="not_found")
        return Final.failed(ex, err)

    # --- membership and the group's view (ingress thread) -------------------------------------

    def _member(self, node: str, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            m = self._members.setdefault(node, Member())
            if kind == "state":
                m.state = str(obj.get("state", "unknown"))
            else:
                m.stats = obj
            leader = min(self._online_locked(), default=None)
            view = self._view_locked(leader) if leader == self.node else None
            states = {n: mm.state for n, mm in self._members.items()} if kind == "state" else None
        if states is not None:
            self.watch.states_changed(states, leader)
        if view is not None:
            data = json.dumps(view, separators=(",", ":")).encode()
            if data != self._last_view:
                self._last_view = data
                self.bus.publish(self.topics.fleet_stats, data, retain=True)

    def _online(self) -> set[str]:
        with self._lock:
            return self._online_locked()

    def _online_locked(self) -> set[str]:
        return {n for n, m in self._members.items() if m.state == "online"}

    def _view_locked(self, leader: str) -> dict[str, Any]:
        """The group's view, ``<base>/fleet/stats``: every board's queue and load, and who answered last."""
        nodes: dict[str, Any] = {}
        last_node, last_at = None, 0.0
        for name in sorted(self._members):
            m = self._members[name]
            s = m.stats
            nodes[name] = {
                "state": m.state,
                "busy": bool(s.get("busy")),
                "queue_depth": int(s.get("queue_depth") or 0),
                "loaded_model": s.get("loaded_model"),
                "requests": int(s.get("requests") or 0),
            }
            at = s.get("last_answer_at")
            if isinstance(at, (int, float)) and at > last_at:
                last_node, last_at = name, float(at)
        online = [n for n in nodes if nodes[n]["state"] == "online"]
        return {
            "group": self.group,
            "leader": leader,
            "boards_online": len(online),
            "busy_boards": sum(1 for n in online if nodes[n]["busy"]),
            "queue_depth": sum(nodes[n]["queue_depth"] for n in online),
            "last_node": last_node,
            "last_answer_at": last_at or None,
            "nodes": nodes,
        }
