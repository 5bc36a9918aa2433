"""The paho-mqtt wrapper: connect with backoff, Will, re-subscribe and re-publish retained state.

The client as configured and the first connect's retries are rkllmd/mqttconnect.py's.

Threads: ``publish``, ``stream``, ``subscribe`` and ``ack`` may be called from any thread, and the
calling thread writes its packet to the socket itself (paho's ``loop_write``, inline): a stream
chunk costs no other thread's wake-up. ``stream`` (QoS 0 chunks) builds its packets itself
(rkllmd/mqttwire.py) and writes them in one send(), behind whatever paho still has to write. The
bus's own *network thread* (rkllmd/mqttloop.py, not paho's ``loop_start``) reads, writes what a
publisher could not finish, sends keepalive pings when one is due and reconnects (``Backoff``:
within half a second of the broker's return). paho does not lock its writes, so every call into the
client that can write or read goes through one lock, ``_io`` (an RLock: paho's callbacks run inside
``loop_read`` with it held, and ``_on_connect`` subscribes and publishes). ``_on_connect``,
``_on_subscribe``, ``_on_publish`` and ``_on_message`` run on the network thread, ``_on_disconnect``
and a QoS 0 ``_on_publish`` also on a publishing thread whose write failed or finished; they only
copy data and hand it on (``on_incoming`` and a publish's ``then`` must just enqueue).

Requests are acknowledged by hand (paho's ``manual_ack``): each QoS 1/2 message carries a
``Receipt``, and ``ack`` sends its PUBACK only when rkllmd says so, once the request's final reply
is delivered (docs/FLEET.md, "When a request is acknowledged"). A receipt from an earlier connection
is acknowledged only if the broker kept the session; otherwise its packet id means nothing now.

Nothing rkllmd owes a client is dropped while the broker is away: paho keeps every QoS>=1
publish made while disconnected and sends it after the reconnect (its queue is unbounded here).
Only stream chunks (``droppable``) are skipped once more than ``STREAM_BACKLOG`` messages wait,
so a long generation during a long outage cannot grow memory without bound; the final reply
still carries the whole text.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd import mqttwire, pahoprivate
from rkllmd.errors import ConfigError
from rkllmd.mqttconnect import BrokerUnavailable, make_client, refusal, retry_connect, set_nodelay
from rkllmd.mqttloop import NetworkLoop
from rkllmd.mqttsettings import MqttSettings
from rkllmd.protocol import Incoming, Receipt

log = structlog.get_logger("rkllmd.bus")

# Stream chunks are skipped (final replies never) once this many publishes wait in paho's queue.
STREAM_BACKLOG = 1000


class Bus:
    """One MQTT connection for the whole daemon."""

    def __init__(
        self,
        cfg: MqttSettings,
        will_topic: str,
        will_payload: bytes,
        on_incoming: Callable[[Incoming], None],
        receive_maximum: int | None = None,
    ) -> None:
        """``receive_maximum`` (MQTT 5): how many unacknowledged requests the broker may send us."""
        self.cfg = cfg
        self.v5 = cfg.protocol == "5"
        self._on_incoming = on_incoming
        # publish(then=...): packet id -> what to call once the broker has it. A PUBACK may be
        # handled before publish() has stored its callback; such ids wait in _early (bounded).
        self._then: dict[int, Callable[[], None]] = {}
        self._early: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._then_lock = threading.Lock()  # never held while calling paho
        self._tracking = 0  # publish(then=...) calls between paho's publish and storing the callback
        self._receive_maximum = receive_maximum if self.v5 else None
        # Connection generations whose packet ids still mean something to the broker: the
        # current one, and earlier ones while the broker kept the session.
        self._generation = 0
        self._live_generations: set[int] = set()
        self.session_present = False  # of the latest CONNACK
        # From a CONNACK with the session kept until the next SUBACK: what arrives then is what the
        # broker held for rkllmd while it was away (mosquitto writes it right after the CONNACK,
        # before it reads a SUBSCRIBE), marked Receipt.backlog. Network thread only.
        self._resending = False
        self._subs: dict[str, int] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._connack_reason: Any = None
        self._connecting = False
        self.connected = threading.Event()
        # SUBSCRIBE mids sent -> topic, and the SUBACK reason codes received for them.
        self._sub_cond = threading.Condition()
        self._sub_sent: dict[int, str] = {}
        self._sub_refused: list[str] = []
        self._client = make_client(cfg, will_topic, will_payload)
        # Every call into paho that can write or read the socket holds this (module docstring).
        self._io = threading.RLock()
        self._loop = NetworkLoop(self._client, self._io)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    # --- lifecycle (main thread) ---------------------------------------------------------------

    def connect(self, stop: threading.Event | None = None) -> None:
        """Connect, retrying with exponential backoff; raise BrokerUnavailable or ConfigError.

        ``stop`` (set on a SIGTERM by the signals thread, rkllmd/signals.py) ends the backoff at once with
        ConnectCancelled: a SIGTERM while the broker is away must not wait out a minute of retries.
        """
        cfg = self.cfg
        stop = stop if stop is not None else threading.Event()

        def attempt() -> None:
            self._connack.clear()
            self._connack_reason = None
            kw: dict[str, Any] = {"keepalive": cfg.keepalive}
            if self.v5:
                kw["clean_start"] = cfg.clean_start
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if not cfg.clean_start:
                    props.SessionExpiryInterval = cfg.session_expiry_s
                if self._receive_maximum is not None:
                    props.ReceiveMaximum = self._receive_maximum
                kw["properties"] = props
            self._connecting = True
            with self._io:  # host, port and the rest for open_socket; closes an earlier attempt's socket
                self._client.connect_async(cfg.host, cfg.port, **kw)
            try:
                sock = pahoprivate.open_socket(self._client)  # TCP and TLS, without the lock
            except ssl.SSLCertVerificationError as exc:
                msg = f"TLS: the broker's certificate did not verify: {exc.verify_message}"
                raise ConnectionError(msg) from exc
            except ssl.SSLError as exc:
                raise ConnectionError(f"TLS handshake failed: {exc.reason or exc}") from exc
            with self._io, self._client.taking(sock):
                self._client.connect(cfg.host, cfg.port, **kw)  # sends CONNECT on that socket
            self._loop.start()
            if not self._connack.wait(timeout=10):
                self._loop.stop()
                raise ConnectionError("no CONNACK within 10 s")
            reason = self._connack_reason
            if isinstance(reason, str):  # the connection closed before a CONNACK came
                self._loop.stop()
                raise ConnectionError(reason)
            if reason is not None and getattr(reason, "is_failure", False):
                self._loop.stop()
                raise refusal(cfg, reason)

        try:
            retry_connect(cfg, attempt, stop)
        finally:
            self._connecting = False

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait for the SUBACK of every subscription sent so far; raise ConfigError if one was refused
        (e.g. the broker's ACL does not let rkllmd read its request topics), BrokerUnavailable if none came.
        """
        deadline = time.monotonic() + timeout
        self.connected.wait(timeout)  # set once _on_connect has sent the subscriptions it knew of
        with self._sub_cond:
            while self._sub_sent and not self._sub_refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = ", ".join(self._sub_sent.values())
                    raise BrokerUnavailable(f"no SUBACK for {waiting} within {timeout:g} s")
                self._sub_cond.wait(left)
            if self._sub_refused:
                raise ConfigError(
                    f"the broker at {self.cfg.host}:{self.cfg.port} refused rkllmd's subscription to "
                    f"{'; '.join(self._sub_refused)} (check the broker's ACL for user {self.cfg.username!r})"
                )

    def disconnect(self) -> None:
        """Send DISCONNECT (the Will is not published), then end the network thread."""
        try:
            with self._io:
                self._client.disconnect()
                self._loop.kick()
        finally:
            self._loop.stop(flush_s=2.0)

    # --- any thread ----------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int | None = None) -> Callable[[], None]:
        """Subscribe now and after every reconnect; returns the matching unsubscribe."""
        q = self.cfg.qos if qos is None else qos
        with self._lock:
            self._subs[topic] = q
            now = self.connected.is_set()  # see _on_connect
        if now:
            self._send_subscribe(topic, q)

        def unsubscribe() -> None:
            with self._lock:
                self._subs.pop(topic, None)
            with self._io:
                self._client.unsubscribe(topic)
                self._loop.kick()

        return unsubscribe

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int | None = None,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
        droppable: bool = False,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Publish now, or queue it in paho until the broker is back; ``droppable`` (stream chunks)
        is skipped instead when more than ``STREAM_BACKLOG`` messages already wait.

        ``then`` is called once the broker has the message (its PUBACK, on the bus's network thread,
        so it must only enqueue), at once for QoS 0, and at once if paho refused the publish."""
        q = self.cfg.qos if qos is None else qos
        if droppable and not self.connected.is_set() and pahoprivate.unacked(self._client) >= STREAM_BACKLOG:
            return
        props = None
        if self.v5 and (correlation_data is not None or content_type is not None):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if content_type is not None:
                props.ContentType = content_type
        if retain:
            with self._lock:
                self._retained[topic] = (payload.encode() if isinstance(payload, str) else payload, q)
        tracked = then is not None and q > 0
        if tracked:
            with self._then_lock:
                self._tracking += 1  # from here until its callback is stored, note early PUBACKs
        try:
            with self._io:  # written to the socket here, on this thread (module docstring)
                info = self._client.publish(topic, payload, qos=q, retain=retain, properties=props)
                self._loop.kick()
        except BaseException:
            if tracked:
                with self._then_lock:
                    self._tracking -= 1
            raise
        failed = info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: sent later
        if failed:
            log.error("publish failed", topic=topic, error=mqtt.error_string(info.rc))
        if then is None:
            return
        early = True
        if tracked:
            with self._then_lock:
                self._tracking -= 1
                early = failed or self._early.pop(info.mid, 0) is None
                if not early:
                    self._then[info.mid] = then
                if not self._tracking:
                    self._early.clear()
        if early:
            then()

    def stream(self, messages: Sequence[tuple[str, bytes]], qos: int = 0) -> None:
        """Stream messages (not retained, droppable) from any thread, in call order with all else:
        at QoS 0, while the connection is plain TCP and up and paho has nothing unwritten, all of
        them in one send() (rkllmd/mqttwire.py); otherwise each through publish(), in one TCP segment."""
        with self._io:
            sock = self._client.socket()
            if (
                qos == 0
                and type(sock) is socket.socket  # plain TCP, not TLS
                and self.connected.is_set()
                and not self._client.want_write()
            ):
                packets = b"".join(mqttwire.publish_qos0(t, p, self.v5) for t, p in messages)
                self._loop.write_now(sock, packets)
                return
            with self.together():
                for topic, payload in messages:
                    self.publish(topic, payload, qos=qos, droppable=True)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Publishes made inside leave in one TCP segment where the OS allows (Linux TCP_CORK):
        a stream chunk and its bare text cost the broker, and the loopback stack, one wake-up."""
        with self._io:
            sock = self._client.socket()
            cork = getattr(socket, "TCP_CORK", None)
            corked = False
            if cork is not None and isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
                    corked = True
            try:
                yield
            finally:
                if corked:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, cork, 0)  # type: ignore[union-attr]

    def ack(self, receipt: Receipt) -> None:
        """Acknowledge a request message to the broker (any thread); see the module docstring."""
        if receipt.connection not in self._live_generations:
            return  # the broker dropped that session: the packet id now names nothing (or another message)
        with self._io:
            rc = self._client.ack(receipt.mid, receipt.qos)
            self._loop.kick()
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("ack failed", mid=receipt.mid, error=mqtt.error_string(rc))

    def publish_json(self, topic: str, obj: Any, *, retain: bool = False, qos: int | None = None) -> None:
        self.publish(topic, json.dumps(obj, ensure_ascii=False).encode(), retain=retain, qos=qos)

    def wait_published(self, timeout: float = 5.0) -> None:
        """Give paho time to flush queued QoS>0 messages (used before a clean stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pahoprivate.unacked(self._client):
                return
            time.sleep(0.02)

    def _send_subscribe(self, topic: str, q: int) -> None:
        # _sub_cond is held across the call so the SUBACK cannot be handled before the mid is known;
        # _io is taken first, as the network thread does (it holds _io when _on_subscribe takes _sub_cond)
        with self._io, self._sub_cond:
            rc, mid = self._client.subscribe(topic, qos=q)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._sub_sent[mid] = topic
            self._loop.kick()

    # --- paho's callbacks (the network thread; see the module docstring) ----------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        set_nodelay(client)
        self._connack_reason = reason
        self._connack.set()
        if getattr(reason, "is_failure", False):
            log.error("broker refused connection", reason=str(reason))
            self._loop.backoff.refused()
            return
        self._loop.backoff.connected()
        present = bool(getattr(flags, "session_present", False))
        self._generation += 1
        if not present:
            self._live_generations.clear()
        self._live_generations.add(self._generation)
        self.session_present = present
        self._resending = present
        log.info(
            "connected to broker",
            host=self.cfg.host,
            port=self.cfg.port,
            protocol=self.cfg.protocol,
            session_present=present,
        )
        with self._lock:
            # subscribe() reads `connected` under this lock: a topic added before this block is
            # sent here, one added after it is sent by subscribe() itself
            for topic, q in self._subs.items():
                self._send_subscribe(topic, q)
            retained = list(self._retained.items())
            self.connected.set()
        for topic, (payload, q) in retained:
            client.publish(topic, payload, qos=q, retain=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if self._connecting and not self._connack.is_set():
            # closed during the first connect, before any CONNACK: fail this attempt now
            self._connack_reason = f"the broker closed the connection before CONNACK ({reason})"
            self._connack.set()
            return
        self._loop.backoff.disconnected(getattr(flags, "is_disconnect_packet_from_server", False), reason)
        if getattr(reason, "value", 0) != 0:
            log.warning("disconnected from broker; reconnects with backoff", reason=str(reason))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._resending = False  # the broker reads SUBSCRIBEs after it has sent what it held
        with self._sub_cond:
            topic = self._sub_sent.pop(mid, None)
            for rc in reasons or ():
                if getattr(rc, "is_failure", False):
                    log.error("broker refused subscription", topic=topic, reason=str(rc))
                    self._sub_refused.append(f"{topic}: {rc}")
            self._sub_cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            # An ACL refused it (mosquitto tells a v5 client "Not authorized"): without this line
            # a refused discovery or reply would go unnoticed; the broker's log names the topic.
            log.warning(
                "the broker refused a message rkllmd published (its ACL?)", reason=str(reason), mid=mid
            )
        with self._then_lock:
            then = self._then.pop(mid, None)
            if then is None and self._tracking:  # perhaps a publish() that has not stored it yet
                self._early[mid] = None
                if len(self._early) > 4096:
                    self._early.popitem(last=False)
        if then is not None:
            then()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        self._on_incoming(
            Incoming(
                topic=msg.topic,
                payload=bytes(msg.payload),
                response_topic=response_topic or None,
                correlation_data=bytes(corr) if corr is not None else None,
                received_at=time.monotonic(),
                receipt=(
                    Receipt(self._generation, msg.mid, msg.qos, bool(msg.dup), self._resending)
                    if msg.qos > 0
                    else None
                ),
                dup=bool(msg.dup),
            )
        )
