"""What rkllmd uses of paho-mqtt 2.x beyond its documented API: here and nowhere else.

The bus drives paho's network loop itself (rkllmd/mqttloop.py) and opens each connection's socket
without its lock; for that it needs a few of paho's private names. Every other module goes through
the functions below, one per need. ``check`` runs when the bus's client is made, so a paho that
moved one fails at start, naming the version, instead of mid-stream; tests/test_paho_private.py
checks each name's shape against the release constraints.txt pins.

Threads: the callers' (the bus's network thread, publishers, the main thread); each function holds
what paho itself would (``last_traffic``: paho's lock of those times), the rest is the caller's lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt import enums

from rkllmd.errors import RkllmdError

# The private names, on a client, and what rkllmd needs each one for.
CLIENT_NAMES = {
    "_create_socket": "open_socket, Client: the TCP (and TLS) connection opened without the bus's lock",
    "_packet_queue": "queue_raw: the rest of a stream write the socket did not take, ahead of later packets",
    "_loop_rc_handle": "drop_connection: after a callback failed half-way through a packet",
    "_state": "closed: disconnect() was called, so the network thread neither reconnects nor waits",
    "_keepalive": "keepalive: when a ping is due",
    "_msgtime_mutex": "last_traffic: the lock paho holds over the two times below",
    "_last_msg_out": "last_traffic",
    "_last_bytes_received": "last_traffic",
    "_out_messages": "unacked: publishes the broker has not acknowledged yet (no public count)",
}
# ... and in paho.mqtt.enums: the connection's states, for ``closed``.
ENUM_NAMES = {"_ConnectionState": "closed: MQTT_CS_DISCONNECTING, MQTT_CS_DISCONNECTED"}

# The command byte given to bytes queued in paho (queue_raw): 0 is no MQTT packet type, so paho
# writes them out and acts on nothing.
RAW = 0


class Client(mqtt.Client):
    """paho's client, whose next socket may be one opened beforehand (``premade``).

    paho's ``reconnect()`` opens the TCP (and TLS) connection itself, a blocking call of up to
    ``connect_timeout``; the bus opens it first (``open_socket``), without its lock, so publishers
    do not stall while a broker that is away is tried, and lets ``reconnect()`` take that socket.
    """

    premade: Any = None

    def _create_socket(self) -> Any:
        sock, self.premade = self.premade, None
        return sock if sock is not None else super()._create_socket()

    @contextlib.contextmanager
    def taking(self, sock: Any) -> Iterator[None]:
        """A connect() or reconnect() inside takes ``sock``; closed if it was not taken."""
        self.premade = sock
        try:
            yield
        finally:
            if self.premade is not None:
                self.premade = None
                sock.close()


def open_socket(client: Client) -> Any:
    """A new connection to the configured broker (TCP, TLS), as paho's connect() would open it."""
    return client._create_socket()


def queue_raw(client: mqtt.Client, data: bytes) -> None:
    """Queue ``data`` to be written after what paho already has queued, as bytes (no packet)."""
    client._packet_queue(RAW, data, 0, 0)


def drop_connection(client: mqtt.Client, rc: Any) -> None:
    """Close the connection as paho's own loop does after an error ``rc`` (on_disconnect runs)."""
    client._loop_rc_handle(rc)


def closed(client: mqtt.Client) -> bool:
    """disconnect() was called: the connection is not to be made again."""
    return client._state in (
        enums._ConnectionState.MQTT_CS_DISCONNECTING,
        enums._ConnectionState.MQTT_CS_DISCONNECTED,
    )


def keepalive(client: mqtt.Client) -> int:
    """The connection's keepalive in seconds (0: none)."""
    return int(client._keepalive)


def last_traffic(client: mqtt.Client) -> float:
    """paho's clock (time.monotonic) when a packet last went out or bytes last came in, the
    earlier of the two: what loop_misc's keepalive ping is due from."""
    with client._msgtime_mutex:
        return float(min(client._last_msg_out, client._last_bytes_received))


def unacked(client: mqtt.Client) -> int:
    """QoS 1 and 2 publishes paho holds until the broker acknowledges them."""
    return len(client._out_messages)


def check(client: mqtt.Client) -> None:
    """RkllmdError unless ``client`` and paho have every private name above."""
    missing = [name for name in CLIENT_NAMES if not hasattr(client, name)]
    missing += [name for name in ENUM_NAMES if not hasattr(enums, name)]
    if missing:
        raise RkllmdError(
            f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks what rkllmd's bus uses of it "
            f"({', '.join(missing)}): install the paho-mqtt release constraints.txt names"
        )
