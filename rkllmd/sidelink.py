"""A fleet board's extra MQTT connections, beside the bus: the leader's presence and a takeover.

The bus (rkllmd/bus.py) is the board's one connection for requests and replies. A fleet needs two
more, each short and simple (docs/FLEET.md, "When a board dies"):

- the *presence* link, held by the leader: a clean session whose Will sets the fleet's retained
  state ``offline``, so the last board's death leaves the fleet offline; it also catches requests
  on a model's topic that no live board serves;
- a *takeover* link: the dead board's own client id and kept session, to receive what the broker
  held for it and then end that session.

Threads: each link runs on paho's own thread (``loop_start``); ``on_message``, ``on_connect`` and
``on_gone`` run there and must only hand data on. ``start``, ``subscribe``, ``publish``, ``ack`` and
``close`` may be called from any thread (paho locks its own queues for these calls).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from rkllmd.mqttconnect import make_client, set_nodelay
from rkllmd.mqttsettings import MqttSettings

log = structlog.get_logger("rkllmd.fleet")


class SideLink:
    """One extra MQTT 5 connection; see the module docstring."""

    def __init__(
        self,
        cfg: MqttSettings,
        client_id: str,
        *,
        name: str,
        will: tuple[str, bytes] | None = None,
        clean: bool = True,
        session_expiry_s: int = 0,
        reconnect: bool = True,
        on_message: Callable[[mqtt.MQTTMessage], None] = lambda msg: None,
        on_connect: Callable[[bool], None] = lambda session_present: None,
        on_gone: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.cfg, self.name = cfg, name
        self._clean, self._expiry = clean, session_expiry_s
        self._on_message, self._on_connect_cb, self._on_gone = on_message, on_connect, on_gone
        will_topic, will_payload = will if will is not None else (None, b"")
        self._client = make_client(cfg, will_topic, will_payload, client_id=client_id, reconnect=reconnect)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_message = lambda c, u, m: self._on_message(m)
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.closed = False

    def start(self) -> None:
        """Connect in the background (paho's thread retries while ``reconnect`` is set)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._expiry
        self._client.connect_async(
            self.cfg.host, self.cfg.port, self.cfg.keepalive, clean_start=self._clean, properties=props
        )
        self._client.loop_start()

    def subscribe(self, topic: str, qos: int) -> None:
        """Subscribe now if connected, and on every (re)connect."""
        with self._lock:
            self._subs[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            self._client.unsubscribe(topics)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: Any = None
    ) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def ack(self, mid: int, qos: int) -> None:
        self._client.ack(mid, qos)

    def close(self, *, with_will: bool = False) -> None:
        """Disconnect (publishing the Will if asked: MQTT 5 reason 0x04) and end paho's thread."""
        self.closed = True
        try:
            if with_will:
                rc = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
                self._client.disconnect(reasoncode=rc)
            else:
                self._client.disconnect()
        finally:
            if threading.current_thread() is not getattr(self._client, "_thread", None):
                self._client.loop_stop()

    # --- paho's thread -------------------------------------------------------------------------

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("a fleet link was refused", link=self.name, reason=str(reason))
            return
        set_nodelay(client)
        with self._lock:
            subs = list(self._subs.items())
        for topic, qos in subs:
            client.subscribe(topic, qos=qos)
        self.connected.set()
        self._on_connect_cb(bool(getattr(flags, "session_present", False)))

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if not self.closed:
            self._on_gone(str(reason))
