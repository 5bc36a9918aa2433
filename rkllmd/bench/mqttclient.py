"""An MQTT v5 client that times requests to a daemon: publish, first stream chunk, final reply.

paho's network thread stamps each message with perf_counter() as it arrives and queues it; the
calling thread does everything else, so the stamps are not delayed by the benchmark's own work.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd.mqttconnect import set_nodelay
from rkllmd.protocol import Topics


@dataclass
class Arrival:
    t: float
    topic: str
    payload: bytes
    corr: bytes | None


@dataclass
class Exchange:
    """What one generate request looked like from the client's side; times are perf_counter()."""

    t_publish: float
    reply: dict[str, Any]
    t_reply: float
    delta_times: list[float] = field(default_factory=list)
    deltas: list[str] = field(default_factory=list)


class BenchClient:
    """One connection, subscribed to the base topic's stream chunks, its state and info."""

    def __init__(
        self, host: str, port: int, base: str, username: str | None = None, password: str | None = None
    ) -> None:
        self.topics = Topics(base)
        self.cid = "bench-" + uuid.uuid4().hex[:8]
        self.reply_topic = f"{base}-client/{self.cid}/reply"  # outside rkllmd's own topics
        self.inbox: queue.Queue[Arrival] = queue.Queue()
        self.state: str | None = None
        self.info: dict[str, Any] = {}
        self.current: str | None = None  # id of the generate request in flight
        self._ready = threading.Event()
        self._subacks: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=mqtt.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subacks.put(mid)
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise TimeoutError(f"the broker at {host}:{port} did not accept a connection")
        _, mid = self.client.subscribe(
            [(self.topics.stream("+"), 1), (self.reply_topic, 1), (self.topics.state, 1), (f"{base}/info", 1)]
        )
        self._wait_suback(int(mid or 0))

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        set_nodelay(c)  # a small reply must not wait for a delayed ACK (see README, Nagle)
        self._ready.set()

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        props = getattr(m, "properties", None)
        self.inbox.put(Arrival(t, m.topic, bytes(m.payload), getattr(props, "CorrelationData", None)))

    def _wait_suback(self, mid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._subacks.get(timeout=0.1) == mid:
                    return
            except queue.Empty:
                pass
        raise TimeoutError("the broker did not acknowledge the subscription")

    def _next(self, deadline: float, what: str) -> Arrival:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from rkllmd to {what} (last state: {self.state})")
            try:
                a = self.inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if a.topic == self.topics.state:
                self.state = _json(a.payload).get("state")
            elif a.topic.endswith("/info"):
                self.info = _json(a.payload)
            else:
                return a

    def wait_state(self, want: str, timeout: float) -> None:
        """Wait for the daemon's retained state topic to say ``want`` (e.g. online)."""
        deadline = time.monotonic() + timeout
        while self.state != want:
            try:
                self._next(min(deadline, time.monotonic() + 0.5), "state")
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        return

    def _publish(self, command: str, payload: dict[str, Any], rid: str) -> float:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = rid.encode()
        t = time.perf_counter()
        self.client.publish(self.topics.request(command), json.dumps(payload), qos=1, properties=props)
        return t

    def command(self, command: str, payload: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        """Send a control command (load, unload, clear_cache, models) and return its reply."""
        rid = f"{command}-{uuid.uuid4().hex[:8]}"
        self._publish(command, payload, rid)
        deadline = time.monotonic() + timeout
        while True:
            a = self._next(deadline, command)
            if a.topic == self.reply_topic and a.corr == rid.encode():
                return _json(a.payload)

    def generate(self, request: dict[str, Any], timeout: float = 600.0) -> Exchange:
        """Publish one generate request; return once both the final reply and the last chunk are in."""
        rid = "b" + uuid.uuid4().hex[:12]
        stream_topic = self.topics.stream(rid)
        self.current = rid
        t_pub = self._publish("generate", {**request, "id": rid, "stream": True}, rid)
        deadline = time.monotonic() + timeout
        ex: Exchange | None = None
        times: list[float] = []
        deltas: list[str] = []
        stream_done = False
        while ex is None or not stream_done:
            a = self._next(deadline, f"generate {rid}")
            if a.topic == stream_topic:
                chunk = _json(a.payload)
                if "delta" in chunk:
                    times.append(a.t)
                    deltas.append(str(chunk["delta"]))
                stream_done = stream_done or bool(chunk.get("done"))
            elif a.topic == self.reply_topic and a.corr == rid.encode():
                ex = Exchange(t_pub, _json(a.payload), a.t)
                # An error reply may come without a closing chunk (e.g. busy, bad_request).
                stream_done = stream_done or (ex.reply.get("status") != "ok" and not times)
        ex.delta_times, ex.deltas = times, deltas
        self.current = None
        return ex

    def cancel_current(self) -> None:
        """Ask the daemon to cancel the generate request in flight (any thread)."""
        rid = self.current
        if rid is not None:
            # As the request's owner: the cancel's reply in the same folder as the request's.
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.reply_topic.rsplit("/", 1)[0] + "/cancel"
            self.client.publish(self.topics.request("cancel"), rid, qos=1, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
