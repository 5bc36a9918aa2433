"""The bus over a real mosquitto: publishers on several threads write to the socket themselves,
so their packets must still leave whole and in each thread's order; a failing callback must not
leave the daemon deaf; a clean stop leaves no thread behind."""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from rkllmd import pahoprivate
from rkllmd.bus import Bus
from rkllmd.protocol import Incoming
from rkllmd.settings import Settings
from tests.helpers import Broker, Probe


def make_bus(broker: Broker, on_incoming: object = None, **mqtt: object) -> Bus:
    cfg = Settings(
        mqtt={"host": broker.host, "port": broker.port, "client_id": "bus-" + uuid.uuid4().hex[:8], **mqtt}
    ).mqtt
    return Bus(cfg, "t/will", b"gone", on_incoming or (lambda m: None))  # type: ignore[arg-type]


@pytest.fixture
def probe(broker: Broker) -> Iterator[Probe]:
    p = Probe(broker)
    yield p
    p.close()


def run_and_collect(
    threads: list[threading.Thread], probe: Probe, base: str, names: tuple[str, ...], each: int
) -> dict[str, list[bytes]]:
    """Run the publishing threads, then what arrived on ``base/<name>``: ``each`` per name, in order."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got: dict[str, list[bytes]] = {name: [] for name in names}
    deadline = time.monotonic() + 30
    while sum(map(len, got.values())) < len(names) * each:
        m = probe.get(f"{base}/#", timeout=max(0.1, deadline - time.monotonic()))
        got[m.topic.rsplit("/", 1)[1]].append(m.payload)
    return got


def test_publishes_from_two_threads_arrive_whole_and_in_order(broker: Broker, probe: Probe) -> None:
    """Two threads publish at once (QoS 0 and 1, small and large payloads, so some writes are left
    half done for the network thread to finish): every message arrives intact, each thread's in order."""
    base = "t/order/" + uuid.uuid4().hex[:6]
    probe.subscribe(f"{base}/#")
    bus = make_bus(broker)
    bus.connect()
    per_thread = 400
    big = {i for i in range(per_thread) if i % 50 == 7}  # a few 256 KiB payloads among small ones

    def payload(name: str, i: int) -> bytes:
        head = f"{name}:{i}:".encode()
        return head + (b"x" * (256 * 1024) if i in big else b"y" * (i % 37))

    def run(name: str, qos: int) -> None:
        for i in range(per_thread):
            bus.publish(f"{base}/{name}", payload(name, i), qos=qos, droppable=True)

    threads = [threading.Thread(target=run, args=(n, q)) for n, q in (("a", 0), ("b", 1))]
    try:
        got = run_and_collect(threads, probe, base, ("a", "b"), per_thread)
        for name in got:
            assert got[name] == [payload(name, i) for i in range(per_thread)], name
        bus.wait_published(10)
    finally:
        bus.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_stream_writes_interleave_whole_with_publishes_and_finish_when_the_socket_was_full(
    broker: Broker, probe: Probe, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bus.stream builds its QoS 0 packets itself and writes them in one send(): with a tiny send
    buffer most writes are cut short, and what the socket did not take goes out before anything
    published after it, so every message arrives intact and in each thread's order."""
    base = "t/stream/" + uuid.uuid4().hex[:6]
    probe.subscribe(f"{base}/#")
    bus = make_bus(broker, protocol=protocol)
    bus.connect()
    assert bus.connected.wait(5)
    sock = bus._client.socket()
    assert type(sock) is socket.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    queued: list[int] = []
    real_queue = pahoprivate.queue_raw

    def counting_queue(client: mqtt.Client, data: bytes) -> None:
        queued.append(len(data))
        real_queue(client, data)

    monkeypatch.setattr(pahoprivate, "queue_raw", counting_queue)
    per_thread = 300

    def payload(name: str, i: int) -> bytes:  # sizes around the 1-, 2- and 3-byte length limits
        return f"{name}:{i}:".encode() + b"z" * (i * 97 % 20000)

    # The streamer's first writes go alone: a stream write takes the one-send() path only while
    # paho has nothing queued, and a publisher that started at once could keep paho's queue busy
    # through every check on a loaded machine, so no write would ever meet the full socket.
    head_start = threading.Event()

    def streamer() -> None:
        for i in range(0, per_thread, 2):
            bus.stream([(f"{base}/s", payload("s", i)), (f"{base}/s", payload("s", i + 1))])
            if queued or i >= 120:  # a write was cut short, or ~20 KB writes into an 8 KB buffer
                head_start.set()
        head_start.set()

    def publisher() -> None:
        head_start.wait(10)
        for i in range(per_thread):
            bus.publish(f"{base}/p", payload("p", i), qos=1)

    threads = [threading.Thread(target=streamer), threading.Thread(target=publisher)]
    try:
        got = run_and_collect(threads, probe, base, ("s", "p"), per_thread)
        for name in got:
            assert got[name] == [payload(name, i) for i in range(per_thread)], name
        assert queued, "no stream write was cut short: the test did not test the full socket"
    finally:
        bus.disconnect()


def test_a_failing_message_callback_does_not_leave_the_bus_deaf(broker: Broker, probe: Probe) -> None:
    """on_incoming raising (a bug) drops that connection, not the bus: it reconnects, subscribes
    again and messages arrive."""
    topic = "t/deaf/" + uuid.uuid4().hex[:6]
    got: queue.Queue[bytes] = queue.Queue()

    def on_incoming(m: Incoming) -> None:
        if m.payload == b"boom":
            raise RuntimeError("a bug in the handler")
        got.put(m.payload)

    bus = make_bus(broker, on_incoming)
    bus.connect()
    bus.subscribe(topic, qos=1)
    bus.wait_subscribed()
    try:
        probe.publish(topic, b"boom")
        deadline = time.monotonic() + 20
        n = 0
        while True:
            n += 1
            probe.publish(topic, f"after-{n}".encode())
            try:
                if got.get(timeout=0.5).startswith(b"after-"):
                    break
            except queue.Empty:
                assert time.monotonic() < deadline, "nothing arrived after the failing callback"
    finally:
        bus.disconnect()


def test_disconnect_leaves_no_thread_behind(broker: Broker) -> None:
    """A clean stop sends DISCONNECT (no Will) and ends the bus's network thread."""
    before = set(threading.enumerate())
    bus = make_bus(broker)
    bus.connect()
    assert bus.connected.wait(5)
    bus.publish("t/x", b"1", qos=1)
    bus.wait_published(5)
    bus.disconnect()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before
    assert not bus.connected.is_set()
