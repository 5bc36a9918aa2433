"""Taking over a dead fleet board's kept session (docs/FLEET.md, "When a board dies").

The leader connects with the dead board's client id and its session (session expiry 0, so the
session ends with the link), unsubscribes the session's subscriptions (the broker stops routing to
it; what it holds still comes) and serves what the broker held: the group's requests it never sent
to the dead board are published again on their topics, for the live boards to share; a ``DUP`` one
(the dead board had taken it) runs on the leader again, with ``attempt`` 2 (a generation has no
effect but its reply); a request meant for that board alone is answered ``interrupted``. Each id
taken is written to ``<base>/node/<dead>/handed`` (retained) before its acknowledgement, so the dead
board, when it returns, does not answer it again from its journal. A board that returns during
the takeover takes its session back: the broker sends the taker away, and the takeover ends.

Threads: ``run`` on its own takeover thread (rkllmd/fleetwatch.py starts it); the link's
callbacks on paho's thread of the link: they publish, ack and hand requests to ingress.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd import protocol
from rkllmd.commands import MODEL_TOPICS
from rkllmd.errors import Interrupted, RkllmdError
from rkllmd.protocol import Incoming, Receipt, Topics
from rkllmd.settings import Settings
from rkllmd.sidelink import SideLink

log = structlog.get_logger("rkllmd.fleet")

QUIET_S = 0.7  # a takeover ends once its link has had no request this long after the broker's resend
TAKEOVER_MAX_S = 30.0


class Takeover:
    """One takeover of one dead board's session; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        node: str,
        name: str,
        client_id: str,
        models: set[str],
        inject: Callable[[Incoming], None],
        refused: Callable[[mqtt.MQTTMessage, RkllmdError], Incoming],
    ) -> None:
        """``node``: this board; ``name``, ``client_id``, ``models``: the dead board's."""
        assert settings.fleet.group is not None
        self.settings, self.topics, self.group, self.node = settings, topics, settings.fleet.group, node
        self.name, self.client_id, self.models = name, client_id, models
        self.inject, self._refused = inject, refused

    def run(self) -> bool:
        """Connect as the dead board, serve what its session held, end the session; whether the
        broker let it connect (takeover thread)."""
        name, models = self.name, self.models
        took: list[str] = []
        last = [time.monotonic()]
        reached = threading.Event()
        gone = threading.Event()
        handed_topic = self.topics.node_topic(name, "handed")
        base, mine = self.topics.base, set(self.settings.models)

        def on_connect(present: bool) -> None:
            log.warning("took over a dead board's session", node=name, session_present=present)
            share = f"$share/{self.group}/"
            t = self.topics
            subs = [share + t.group_request("+"), f"{base}/node/{name}/request/#"]
            subs += [f"{share}{t.group_request(c)}/{m}" for m in sorted(models) for c in MODEL_TOPICS]
            subs += [t.node_topic("+", k) for k in ("state", "stats", "serves", "handed", "open")]
            subs += [t.fleet_state, t.fleet_cancel, t.fleet_cancel_report]
            link.unsubscribe(subs)  # the broker stops giving it new requests; what it holds still comes
            last[0] = time.monotonic()
            reached.set()

        def on_message(msg: mqtt.MQTTMessage) -> None:
            request = msg.topic.startswith(f"{base}/request/") or msg.topic.startswith(
                f"{base}/node/{name}/request/"
            )
            if request and msg.qos > 0:
                last[0] = time.monotonic()  # the quiet that ends the takeover counts requests only
                rid = protocol.read_address(bytes(msg.payload), 1 << 20).get("id")
                if isinstance(rid, str):
                    took.append(rid)
                    record = {"by": self.node, "ids": took[-1000:], "ended": True}
                    link.publish(handed_topic, json.dumps(record).encode(), qos=1, retain=True)
                self._serve(link, msg, mine)
            if msg.qos > 0:
                link.ack(msg.mid, msg.qos)  # after the handed record: the broker has that first

        def on_gone(reason: str) -> None:
            log.warning("a takeover link closed", node=name, reason=reason)
            gone.set()

        link = SideLink(
            self.settings.mqtt,
            self.client_id,
            name=f"takeover-{name}",
            clean=False,
            session_expiry_s=0,  # the session ends with this link
            reconnect=False,
            on_message=on_message,
            on_connect=on_connect,
            on_gone=on_gone,
        )
        link.start()
        deadline = time.monotonic() + TAKEOVER_MAX_S
        while not gone.is_set() and time.monotonic() < deadline:
            if link.connected.is_set() and time.monotonic() - last[0] > QUIET_S:
                break
            gone.wait(0.1)
        if reached.is_set() and not gone.is_set():
            record = {"by": self.node, "ids": took[-1000:], "ended": True}  # ended even with none taken
            link.publish(handed_topic, json.dumps(record).encode(), retain=True)
        link.close()
        if reached.is_set():
            log.warning(
                "ended a dead board's session", node=name, requests=len(took), taken_back=gone.is_set()
            )
        return reached.is_set()

    def _serve(self, link: SideLink, msg: mqtt.MQTTMessage, mine: set[str]) -> None:
        """A request the dead board's session held: publish it again for the live boards, run it
        here (a DUP one), or answer it (paho's thread of the takeover link)."""
        name, props = self.name, getattr(msg, "properties", None)
        if msg.topic.startswith(f"{self.topics.base}/node/"):
            err = Interrupted(f"board {name!r} went offline and did not come back; send it to another board")
            self.inject(self._refused(msg, err))
            return
        model = (
            msg.topic.rsplit("/", 1)[-1]
            if msg.topic.count("/") > self.topics.group_request("+").count("/")  # <command>/<model>
            else None
        )
        if not msg.dup or (model is not None and model not in mine):
            # For the live boards to share (the dead board's session no longer subscribes); only
            # what the dead board had started runs here, where it can be marked a second attempt.
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            for prop in ("ResponseTopic", "CorrelationData"):
                value = getattr(props, prop, None)
                if value is not None:
                    setattr(out, prop, value)
            link.publish(msg.topic, bytes(msg.payload), properties=out)
            return
        corr = getattr(props, "CorrelationData", None)
        self.inject(
            Incoming(
                topic=msg.topic,
                payload=bytes(msg.payload),
                response_topic=getattr(props, "ResponseTopic", None) or None,
                correlation_data=bytes(corr) if corr is not None else None,
                received_at=time.monotonic(),
                # connection -1: no bus connection acknowledges it (the takeover link did already)
                receipt=Receipt(-1, msg.mid, msg.qos, bool(msg.dup)),
                dup=bool(msg.dup),
            )
        )
