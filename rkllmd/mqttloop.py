"""The bus's network thread: paho's network loop, driven from here instead of ``loop_start``.

``NetworkLoop`` owns the thread (``bus-network``) and its wake pipe. It waits in select() on the
socket and the pipe, reads (``loop_read``: CONNACK, SUBACK, PUBACK, requests, PINGRESP), writes what
a publisher could not finish, sends keepalive pings only when one is due (paho's own loop woke
every second), and reconnects on a socket opened without the lock, after a ``Backoff`` wait. Every call
into the client that can read or write holds ``io``, the bus's lock (rkllmd/bus.py, module
docstring); it is not held across select() nor across a reconnect's TCP/TLS connect.

What of paho-mqtt 2.x beyond its documented API this needs, it reaches through
rkllmd/pahoprivate.py (the one module that names paho's private parts).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from rkllmd import pahoprivate
from rkllmd.pahoprivate import Client

log = structlog.get_logger("rkllmd.bus")

# Reconnect waits (Backoff). A restarted broker must hear rkllmd's subscriptions again within a
# fraction of a second of its return: without broker persistence, requests published before then
# have no subscriber and are dropped. So the first wait is tens of ms and the longest half a
# second, whatever the outage: an attempt on a broker that is away costs a refused TCP connect.
# A broker that answers and refuses (CONNACK failure, an MQTT 5 DISCONNECT with an error reason
# such as "Session taken over", or two connections in a row dropped within STABLE_S) is not helped
# by haste: those waits grow to half a minute, so two clients with one client id do not throw each
# other out many times a second.
FIRST_WAIT_S = 0.025
MAX_WAIT_S = 0.5
MAX_WAIT_REFUSED_S = 30.0
STABLE_S = 2.0  # a connection that lasted this long starts the next outage's waits from the first
_SHUTTING_DOWN = 0x8B  # MQTT 5 DISCONNECT reason "Server shutting down": a restart, come back at once


def _tls_pending(sock: Any) -> bool:
    """Decrypted bytes the TLS layer holds that select() on the socket cannot see."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


class Backoff:
    """Waits between reconnect attempts: doubling from ``FIRST_WAIT_S`` up to ``MAX_WAIT_S`` (or
    ``MAX_WAIT_REFUSED_S`` once the broker refused rkllmd), each one drawn between half and all of
    that (jitter: boards that lost one broker together do not all come back in the same instant).

    Threads: ``next`` runs on the network thread, the others in the bus's paho callbacks (the
    network thread, or a publisher whose write failed); one lock."""

    def __init__(
        self, rand: Callable[[], float] = random.random, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rand, self._clock = rand, clock
        self._lock = threading.Lock()
        self._n = 0  # attempts since the waits last started from the first
        self._refused = False  # the broker said no: the longer cap, until a connection lasts
        self._up_since: float | None = None  # monotonic: the current connection's CONNACK
        self._short = 0  # connections in a row that ended within STABLE_S

    def connected(self) -> None:
        """A CONNACK accepted rkllmd."""
        with self._lock:
            self._up_since = self._clock()

    def refused(self) -> None:
        """The broker refused rkllmd (CONNACK) or sent it away (DISCONNECT with an error reason)."""
        with self._lock:
            self._refused, self._up_since = True, None

    def disconnected(self, by_broker: bool, reason: Any) -> None:
        """The connection ended; ``by_broker``: with the broker's DISCONNECT (MQTT 5), whose error
        reason, save "Server shutting down" (a restart), says it sent rkllmd away."""
        code = getattr(reason, "value", 0)
        if by_broker and code >= 0x80 and code != _SHUTTING_DOWN:
            self.refused()

    def next(self) -> float:
        """Seconds to wait before the next attempt. The waits start from the first again after a
        connection that lasted ``STABLE_S``, not at every CONNACK. Two connections in a row dropped
        sooner count as a refusal, or two clients given one client id would throw each other out
        twice a second; one does not (a broker restarted just after rkllmd connected)."""
        with self._lock:
            if self._up_since is not None:  # the first wait since a connection ended
                if self._clock() - self._up_since >= STABLE_S:
                    self._n, self._refused, self._short = 0, False, 0
                else:  # mosquitto 2.0 closes the socket of a client whose id another client took
                    self._short += 1
                    self._refused = self._refused or self._short >= 2
                self._up_since = None
            cap = MAX_WAIT_REFUSED_S if self._refused else MAX_WAIT_S
            wait = min(cap, FIRST_WAIT_S * 2.0 ** min(self._n, 20))
            self._n += 1
        return wait * (0.5 + 0.5 * self._rand())


class NetworkLoop:
    """The network thread of one paho client whose every read and write holds ``io``."""

    def __init__(self, client: Client, io: threading.RLock) -> None:
        self.client, self.io = client, io
        self.backoff = Backoff()
        self._net: threading.Thread | None = None  # the network thread, while it runs
        self._halt = threading.Event()  # ends the running network thread (after a flush, see stop)
        self._flush_until = 0.0  # monotonic: how long a halting thread may still write what waits
        self._watched: Any = None  # the socket the network thread waits on (under io)
        self._wake_r, self._wake_w = os.pipe()  # a byte here ends the network thread's select()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def write_now(self, sock: socket.socket, data: bytes) -> None:
        """Under ``io``: write ``data`` now; what the socket does not take is queued in paho, ahead
        of anything published later, and the network thread finishes it (as paho does with its own)."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the connection is going: the network thread's next read finds out
            log.debug("stream write failed", error=str(exc))
            return
        if sent < len(data):
            pahoprivate.queue_raw(self.client, data[sent:])
            self.kick()

    def kick(self) -> None:
        """Under ``io``, after a call into paho: wake the network thread if it has work now, i.e. a
        packet this thread could not finish writing, or a socket that changed (closed by a failed
        write, or a new one) while it waits in select() on the old one."""
        if self._net is None or threading.current_thread() is self._net:
            return
        if self.client.want_write() or self.client.socket() is not self._watched:
            self.wake()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._wake_w, b"x")

    def start(self) -> None:
        if self._net is not None:
            return
        # a new event for each thread: one that was left behind (stuck in a connect) stays halted
        self._halt = halt = threading.Event()
        self._net = threading.Thread(target=self._main, args=(halt,), name="bus-network", daemon=True)
        self._net.start()

    def stop(self, flush_s: float = 0.0) -> None:
        """End the network thread, after it has written what waits (at most ``flush_s``)."""
        net = self._net
        if net is None:
            return
        self._flush_until = time.monotonic() + flush_s
        self._halt.set()
        self.wake()
        if net is not threading.current_thread():
            # a reconnect's TCP connect in progress ends within paho's connect_timeout
            net.join(timeout=flush_s + self.client.connect_timeout + 5)
            if net.is_alive():
                log.warning("the MQTT network thread did not stop")
        self._net = None

    def _main(self, halt: threading.Event) -> None:
        try:
            while self._step(halt):
                pass
        except Exception:  # never expected; without this thread the daemon would be deaf
            log.exception("MQTT network thread failed")

    def _step(self, halt: threading.Event) -> bool:
        """Wait for the socket or a wake-up, then read, write, ping; reconnect a lost connection.
        False: the thread ends."""
        c = self.client
        with self.io:
            sock: Any = c.socket()
            self._watched = sock
            want_write = c.want_write()
            pending = _tls_pending(sock)
            closed = pahoprivate.closed(c)
        if halt.is_set() and (sock is None or not want_write or time.monotonic() >= self._flush_until):
            return False
        if sock is None:
            if closed:  # disconnect() was called
                return False
            self._reconnect(halt)
            return True
        timeout = 0.0 if pending else self._misc_timeout()
        if halt.is_set():
            left = self._flush_until - time.monotonic()
            timeout = max(0.0, min(timeout if timeout is not None else 1.0, left))
        try:
            readable, _, _ = select.select([sock, self._wake_r], [sock] if want_write else [], [], timeout)
        except (OSError, ValueError, TypeError):  # the socket was closed meanwhile: look again
            return True
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        try:
            with self.io:
                if c.socket() is not sock:  # closed (or replaced) meanwhile: look again
                    return True
                if sock in readable or pending:
                    c.loop_read()
                    # TLS: a record may hold more packets than loop_read took; select() cannot see them
                    while c.socket() is sock and _tls_pending(sock):
                        c.loop_read()
                # what a publisher left (a full socket buffer) or a callback queued (_on_connect)
                if c.socket() is sock and c.want_write():
                    c.loop_write()
                if c.socket() is sock:
                    c.loop_misc()  # keepalive: PINGREQ when due, drop a broker that stopped answering
        except Exception:  # a callback failed half-way through a packet: start over on a new connection
            log.exception("MQTT network loop failed; reconnecting")
            with self.io, contextlib.suppress(Exception):
                if c.socket() is sock:
                    pahoprivate.drop_connection(c, mqtt.MQTT_ERR_UNKNOWN)
        return True

    def _misc_timeout(self) -> float | None:
        """Seconds until loop_misc has something to do (a keepalive ping, or a PINGRESP overdue);
        None without a keepalive. paho's own loop woke every second instead."""
        c = self.client
        keepalive = pahoprivate.keepalive(c)
        if not keepalive:
            return None
        last = pahoprivate.last_traffic(c)
        return min(float(keepalive), max(0.0, last + keepalive - time.monotonic()) + 0.01)

    def _reconnect(self, halt: threading.Event) -> None:
        """The connection was lost: wait (``Backoff``), open a socket without the lock, then let paho
        send CONNECT on it."""
        c = self.client
        if halt.wait(self.backoff.next()):
            return
        try:
            sock = pahoprivate.open_socket(c)
        except Exception as exc:  # refused, unreachable, TLS: try again after the next wait
            log.debug("reconnect failed", error=str(exc))
            return
        with self.io:
            if halt.is_set() or c.socket() is not None or pahoprivate.closed(c):
                sock.close()
                return
            try:
                with c.taking(sock):
                    c.reconnect()
            except Exception as exc:
                log.debug("reconnect failed", error=str(exc))
