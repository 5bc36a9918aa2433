"""The paho-mqtt wrapper: connect with backoff, Will, re-subscribe and re-publish retained state.

Threads: paho's *network thread* runs ``_on_connect``, ``_on_disconnect`` and ``_on_message``;
they only copy data and hand it on (``on_incoming`` must just enqueue). ``publish`` and
``subscribe`` may be called from any thread (paho serialises them internally).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from rkllmd.errors import ConfigError, RkllmdError
from rkllmd.protocol import Incoming
from rkllmd.settings import MqttSettings

log = structlog.get_logger("rkllmd.bus")

# CONNACK reasons that retrying cannot fix: wrong credentials, not authorised, banned, bad id.
_FATAL_CONNACK = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}


def set_nodelay(client: mqtt.Client) -> None:
    """Turn off Nagle on the client's socket.

    paho writes a packet in more than one send(); with Nagle on, the tail of a small
    PUBLISH waits for the broker's delayed ACK, which added ~40 ms to every request and
    every reply here (measured: 88 ms -> a few ms round trip on loopback).
    """
    sock = client.socket()
    if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
        # not TCP (e.g. a unix socket): nothing to do
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BrokerUnavailable(RkllmdError):
    code = "broker_unavailable"


class Bus:
    """One MQTT connection for the whole daemon."""

    def __init__(
        self,
        cfg: MqttSettings,
        will_topic: str,
        will_payload: bytes,
        on_incoming: Callable[[Incoming], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.v5 = cfg.protocol == "5"
        self._on_incoming = on_incoming
        self._on_connected = on_connected
        self._subs: dict[str, int] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._connack_reason: Any = None
        self.connected = threading.Event()
        client_kw: dict[str, Any] = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": cfg.client_id,
            "protocol": mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        }
        if not self.v5:
            client_kw["clean_session"] = True
        self._client = mqtt.Client(**client_kw)
        self._client.enable_logger(None)  # paho's own logger stays quiet; we log events ourselves
        self._client.will_set(will_topic, will_payload, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_queued_messages_set(10_000)
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, cfg.resolved_password())
        if cfg.tls.enabled:
            try:
                self._client.tls_set(
                    ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                    certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                    keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls: {exc}") from exc
            self._client.tls_insecure_set(cfg.tls.insecure)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # --- lifecycle (main thread) ---------------------------------------------------------------

    def connect(self) -> None:
        """Connect, retrying with exponential backoff; raise BrokerUnavailable or ConfigError."""
        cfg = self.cfg

        def attempt() -> None:
            self._connack.clear()
            kw: dict[str, Any] = {"keepalive": cfg.keepalive}
            if self.v5:
                kw["clean_start"] = True
            self._client.connect(cfg.host, cfg.port, **kw)
            self._client.loop_start()
            if not self._connack.wait(timeout=10):
                self._client.loop_stop()
                raise ConnectionError("no CONNACK within 10 s")
            reason = self._connack_reason
            if reason is not None and getattr(reason, "is_failure", False):
                self._client.loop_stop()
                if str(reason) in _FATAL_CONNACK or getattr(reason, "value", 0) in (4, 5, 134, 135, 138):
                    raise ConfigError(f"the broker at {cfg.host}:{cfg.port} refused rkllmd: {reason}")
                raise ConnectionError(f"broker refused the connection: {reason}")

        retrying = Retrying(
            stop=stop_after_attempt(cfg.connect_retries),
            wait=wait_exponential(multiplier=0.5, max=15),
            retry=retry_if_exception_type((OSError, ConnectionError)),
            before_sleep=lambda rs: log.warning(
                "broker not reachable, retrying",
                host=cfg.host,
                port=cfg.port,
                attempt=rs.attempt_number,
                error=str(rs.outcome.exception()) if rs.outcome else None,
            ),
            reraise=False,
        )
        try:
            retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise BrokerUnavailable(
                f"cannot reach the MQTT broker at {cfg.host}:{cfg.port} after {cfg.connect_retries} "
                f"attempts: {last}"
            ) from None

    def disconnect(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    # --- any thread ----------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int | None = None) -> Callable[[], None]:
        """Subscribe now and after every reconnect; returns the matching unsubscribe."""
        q = self.cfg.qos if qos is None else qos
        with self._lock:
            self._subs[topic] = q
        if self.connected.is_set():
            self._client.subscribe(topic, qos=q)

        def unsubscribe() -> None:
            with self._lock:
                self._subs.pop(topic, None)
            self._client.unsubscribe(topic)

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
    ) -> None:
        q = self.cfg.qos if qos is None else qos
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
        self._client.publish(topic, payload, qos=q, retain=retain, properties=props)

    def publish_json(self, topic: str, obj: Any, *, retain: bool = False, qos: int | None = None) -> None:
        self.publish(topic, json.dumps(obj, ensure_ascii=False).encode(), retain=retain, qos=qos)

    def wait_published(self, timeout: float = 5.0) -> None:
        """Give paho time to flush queued QoS>0 messages (used before a clean stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._client._out_messages:  # paho has no public "all acked" check
                return
            time.sleep(0.02)

    # --- paho network thread -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        set_nodelay(client)
        self._connack_reason = reason
        self._connack.set()
        if getattr(reason, "is_failure", False):
            log.error("broker refused connection", reason=str(reason))
            return
        log.info("connected to broker", host=self.cfg.host, port=self.cfg.port, protocol=self.cfg.protocol)
        with self._lock:
            subs = list(self._subs.items())
            retained = list(self._retained.items())
        for topic, q in subs:
            client.subscribe(topic, qos=q)
        for topic, (payload, q) in retained:
            client.publish(topic, payload, qos=q, retain=True)
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if getattr(reason, "value", 0) != 0:
            log.warning("disconnected from broker; paho reconnects with backoff", reason=str(reason))

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
            )
        )
