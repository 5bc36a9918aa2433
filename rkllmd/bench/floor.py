"""The least three processes spend relaying a token at a fixed rate on this machine, now: the
yardstick next to rkllmd's CPU per token in the relay benchmark (rkllmd/bench/relay.py).

A *pacer* process sleeps the token interval and writes each token to a pipe, as a runtime's
worker does; a *relay* process reads the pipe and writes the token's two QoS 0 PUBLISH packets
(the chunk and its text copy, as rkllmd's stream does) to the broker in one send(), with nothing
else; the broker hands the chunk to one subscriber. No runtime, no parsing, no bookkeeping: the
same hops as rkllmd's path, each doing as little as it can.

Why it is measured at all: on a virtual machine, waking a CPU that was idle for a token interval
costs far more than the work done once awake (the few microseconds of Python a token needs when
tokens come every millisecond take well over 100 µs after 33 ms of idling, see
docs/BENCHMARKING.md), and that cost moves by half from one minute to the next. Measured in the
same run, the floor says how much of rkllmd's figure is the machine's and how much rkllmd's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from rkllmd.bench import procfs

# Both processes run without site (-S); the pacer imports only the standard library.
_PACER = """
import os, sys, time
interval, count = float(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    time.sleep(interval)
    os.write(1, b"tok%d " % i)
"""

# MQTT 3.1.1 CONNECT (clean session, keepalive 60 s), then one send() per read of the pipe, of the
# packets rkllmd's stream writes (rkllmd/mqttwire.py, which imports nothing).
_RELAY = """
import os, socket, sys
from rkllmd.mqttwire import publish_qos0, remaining_length
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cid = b"floor-%d" % os.getpid()
body = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c" + len(cid).to_bytes(2, "big") + cid
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(b"\\x10" + remaining_length(len(body)) + body)
if sock.recv(4)[:2] != b"\\x20\\x02":
    sys.exit("no CONNACK")
seq = 0
while True:
    data = os.read(0, 65536)
    if not data:
        break
    chunk = b'{"id": "floor", "seq": %d, "delta": "%s"}' % (seq, data)
    sock.sendall(publish_qos0(topic, chunk, False) + publish_qos0(topic + "/text", data, False))
    seq += 1
sock.sendall(b"\\xe0\\x00")
"""

# The relay finds rkllmd (for mqttwire) where this process did, without site (-S).
_RKLLMD_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(host: str, port: int, broker_pid: int | None, rate: float, tokens: int) -> dict[str, Any]:
    """``tokens`` tokens at ``rate`` tok/s through pacer, relay and broker to one subscriber; CPU
    ms per token of each, and whether every token arrived."""
    topic = f"floor{uuid.uuid4().hex[:8]}/stream/floor"
    got: queue.Queue[int] = queue.Queue()  # tokens per chunk: a read may bring several
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="floor-sub-" + topic[5:13])
    subscribed: queue.Queue[int] = queue.Queue()
    sub.on_message = lambda c, u, m: got.put(json.loads(m.payload)["delta"].count("tok"))
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.put(mid)
    sub.connect(host, port, keepalive=60)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=0)
        subscribed.get(timeout=10)
        broker0 = procfs.cpu_seconds(broker_pid) if broker_pid else None
        woke0 = procfs.switches([broker_pid]) if broker_pid else None
        pacer = subprocess.Popen(
            [sys.executable, "-S", "-c", _PACER, str(1 / rate), str(tokens)], stdout=subprocess.PIPE
        )
        relay = subprocess.Popen(
            [sys.executable, "-S", "-c", _RELAY, host, str(port), topic],
            stdin=pacer.stdout,
            env={**os.environ, "PYTHONPATH": _RKLLMD_ROOT},
        )
        assert pacer.stdout is not None
        pacer.stdout.close()  # the relay holds the read end now: it sees EOF when the pacer ends
        pacer_cpu, pacer_woke = _cpu_of(pacer, "pacer")
        relay_cpu, relay_woke = _cpu_of(relay, "relay")
        arrived, deadline = 0, time.monotonic() + 10
        while arrived < tokens and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                arrived += got.get(timeout=0.2)
        broker1 = procfs.cpu_seconds(broker_pid) if broker_pid else None
        woke1 = procfs.switches([broker_pid]) if broker_pid else None
    finally:
        sub.loop_stop()
        sub.disconnect()
    broker = (broker1 - broker0) * 1e3 / tokens if broker0 is not None and broker1 is not None else 0.0
    parts = {"pacer": pacer_cpu * 1e3 / tokens, "relay": relay_cpu * 1e3 / tokens, "broker": broker}
    woke = {
        "pacer": pacer_woke / tokens,
        "relay": relay_woke / tokens,
        "broker": (woke1 - woke0) / tokens if woke0 is not None and woke1 is not None else 0.0,
    }
    return {
        "rate": rate,
        "tokens": tokens,
        "cpu_ms_per_token_parts": parts,
        "cpu_ms_per_token": sum(parts.values()),
        "wakeups_per_token_parts": woke,
        "wakeups_per_token": sum(woke.values()),
        "all_arrived": arrived == tokens,
    }


def _cpu_of(proc: subprocess.Popen[bytes], what: str) -> tuple[float, int]:
    """User + system seconds of ``proc``, read as it is reaped (to the microsecond, unlike /proc's
    ticks), and its context switches: how often it went to sleep and was woken again."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the floor's {what} process failed (exit {proc.returncode})")
    return float(usage.ru_utime + usage.ru_stime), usage.ru_nvcsw + usage.ru_nivcsw
