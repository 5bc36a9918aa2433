"""Opening the bus's connection: the paho client as configured, the first connect's retries.

``make_client`` builds the client (MQTT 3.1.1 or 5, manual acknowledgements, the Will, an
unbounded queue, credentials, TLS); ``retry_connect`` runs one connect attempt after another with
exponential backoff until one succeeds, the retries run out (``BrokerUnavailable``) or a stop is
asked for (``ConnectCancelled``); ``refusal`` says which CONNACK no retry can fix. All of it runs
on the main thread (rkllmd/bus.py ``Bus.connect``); ``set_nodelay`` also serves rkllmd's clients.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    stop_when_event_set,
    wait_exponential,
)

from rkllmd import pahoprivate
from rkllmd.errors import ConfigError, RkllmdError
from rkllmd.mqttsettings import MqttSettings
from rkllmd.pahoprivate import Client

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


class ConnectCancelled(RkllmdError):
    """A stop was requested (SIGTERM) while the first connection was still being retried."""


class BrokerUnavailable(RkllmdError):
    code = "broker_unavailable"


def make_client(
    cfg: MqttSettings,
    will_topic: str | None,
    will_payload: bytes,
    *,
    client_id: str | None = None,
    reconnect: bool = True,
) -> Client:
    """The bus's paho client, configured and not yet connected; ConfigError for bad TLS files.

    A fleet's side connections (rkllmd/sidelink.py) give their own ``client_id``, no Will
    (``will_topic`` None) or another one, and ``reconnect=False`` where a lost connection ends them."""
    v5 = cfg.protocol == "5"
    client_kw: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": cfg.client_id if client_id is None else client_id,
        "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        "manual_ack": True,
        "reconnect_on_failure": reconnect,
    }
    if not v5:
        client_kw["clean_session"] = cfg.clean_start
    client = Client(**client_kw)
    pahoprivate.check(client)
    client.enable_logger(None)  # paho's own logger stays quiet; we log events ourselves
    if will_topic is not None:
        client.will_set(will_topic, will_payload, qos=1, retain=True)
    # Unbounded: a final reply must never be refused by a full queue (rkllmd/bus.py's docstring).
    client.max_queued_messages_set(0)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.resolved_password())
    if cfg.tls.enabled:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt.tls: {exc}") from exc
        client.tls_insecure_set(cfg.tls.insecure)
    return client


def refusal(cfg: MqttSettings, reason: Any) -> Exception:
    """The error of a CONNACK that refused us: ConfigError when retrying cannot fix it."""
    if str(reason) in _FATAL_CONNACK or getattr(reason, "value", 0) in (4, 5, 134, 135, 138):
        return ConfigError(f"the broker at {cfg.host}:{cfg.port} refused rkllmd: {reason}")
    return ConnectionError(f"broker refused the connection: {reason}")


def retry_connect(cfg: MqttSettings, attempt: Callable[[], None], stop: threading.Event) -> None:
    """Call ``attempt`` until it returns, with exponential backoff between tries (main thread).

    An OSError or ConnectionError is retried, up to ``cfg.connect_retries`` tries in all; then
    BrokerUnavailable. ``stop`` (set on a SIGTERM by the signals thread) ends the backoff at once with
    ConnectCancelled. Any other error (a ConfigError) is raised as it is.
    """

    def cut_short(seconds: float) -> None:
        stop.wait(seconds)  # the backoff's sleep, ended early by a stop request

    retrying = Retrying(
        stop=stop_any(stop_after_attempt(cfg.connect_retries), stop_when_event_set(stop)),
        sleep=cut_short,
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
        if stop.is_set():
            raise ConnectCancelled("stop requested before the broker was reached") from None
        last = exc.last_attempt.exception()
        raise BrokerUnavailable(
            f"cannot reach the MQTT broker at {cfg.host}:{cfg.port} after {cfg.connect_retries} "
            f"attempts: {last}"
        ) from None
