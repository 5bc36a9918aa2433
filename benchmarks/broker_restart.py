"""Broker restarts: how long rkllmd is deaf after the broker is back, and what it runs twice.

Not a test (nothing is asserted): it prints figures. It starts its own loopback mosquitto and
rkllmd on the C double of the RKLLM runtime (needs gcc), stops the broker (SIGTERM, as
``systemctl restart mosquitto`` does), keeps it away for ``--outage`` seconds and starts it again
on the same port.

- ``gap`` (no broker persistence): from the moment the new broker accepts connections, a fresh
  client sends a ``models`` request every ``--probe-ms`` ms; the first one answered was sent after
  rkllmd had subscribed again (a broker without persistence drops requests nobody subscribes to),
  so its send time minus the broker's return is the window in which requests vanish.
- ``twice`` (broker persistence, rkllmd's session kept): ``--requests`` requests are taken, the
  broker goes away while they run, and their replies wait in rkllmd until it is back; the broker
  then sends the unacknowledged requests again (DUP). Counted from rkllmd's log: runs per request.

    .venv/bin/python benchmarks/broker_restart.py --outage 3 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_rkllm.build import build_fake  # noqa: E402
from tests.helpers import Broker, DaemonProc, free_port, start_broker, write_config  # noqa: E402


def _config(work: Path, port: int, base: str, lib: Path) -> Path:
    weights = work / "fake-model.rkllm"
    weights.write_bytes(b"RKLLM fake model for the broker restart benchmark\n")
    return write_config(
        work / f"{base}.toml",
        {
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "base_topic": base,
                "client_id": base,
                "clean_start": False,
                "session_expiry_s": 300,
            },
            "log": {"level": "info", "format": "json"},
            "limits": {"queue_size": 16},
            "models": {"fake": {"runtime": "rkllm", "path": str(weights), "library": str(lib)}},
        },
    )


def _persist(work: Path) -> str:
    store = work / "store"
    store.mkdir(exist_ok=True)
    return f"persistence true\npersistence_location {store}/\nmax_queued_messages 10000\n"


def _client(broker: Broker, reply: str, got: queue.Queue[tuple[str, float]]) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_message = lambda cl, u, m: got.put((json.loads(m.payload).get("id", ""), time.monotonic()))
    c.on_subscribe = lambda cl, u, mid, rc, p: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe(reply, qos=1)
    if not subscribed.wait(10):
        raise TimeoutError("the probe got no SUBACK")
    return c


def gap_round(work: Path, lib: Path, outage: float, probe_s: float) -> float | None:
    """Seconds from the broker's return to the first request rkllmd answered; None: none answered."""
    base = f"gap{int(time.time() * 1000) % 100000}"
    broker = start_broker(work)
    daemon = DaemonProc(_config(work, broker.port, base, lib), work)
    try:
        daemon.wait_log('"rkllmd ready"', timeout=120)
        broker.stop()
        time.sleep(outage)
        broker = start_broker(work, port=broker.port)  # returns once the port accepts
        back = time.monotonic()
        got: queue.Queue[tuple[str, float]] = queue.Queue()
        c = _client(broker, f"{base}-reply", got)
        sent: dict[str, float] = {}
        try:
            n = 0
            first: float | None = None
            while time.monotonic() - back < 30 and first is None:
                rid = f"p{n}"
                sent[rid] = time.monotonic()
                c.publish(
                    f"{base}/request/models", json.dumps({"id": rid, "reply_to": f"{base}-reply"}), qos=1
                )
                n += 1
                deadline = time.monotonic() + probe_s
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        rid_got, _ = got.get(timeout=left)
                    except queue.Empty:
                        break
                    if rid_got in sent:
                        at = sent[rid_got] - back
                        first = at if first is None else min(first, at)
            return first
        finally:
            c.loop_stop()
            c.disconnect()
    finally:
        daemon.stop()
        broker.stop()


def twice_round(work: Path, lib: Path, outage: float, requests: int) -> tuple[int, int]:
    """(requests run more than once, requests) after a broker restart with persistence."""
    base = f"dup{int(time.time() * 1000) % 100000}"
    persist = _persist(work)
    port = free_port()
    broker = start_broker(work, port=port, extra_conf=persist)
    daemon = DaemonProc(_config(work, port, base, lib), work)
    try:
        daemon.wait_log('"rkllmd ready"', timeout=120)
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(broker.host, broker.port)
        c.loop_start()
        ids = [f"r{i}" for i in range(requests)]
        for rid in ids:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{base}-reply"
            body = {"id": rid, "prompt": f"[[delay_ms=40]] [[len=8]] {rid}", "stream": False}
            c.publish(f"{base}/request/generate", json.dumps(body), qos=1, properties=props).wait_for_publish(
                5
            )
        c.loop_stop()
        c.disconnect()
        daemon.wait_log('"request queued"', timeout=30)
        time.sleep(0.2)  # the first one runs
        broker.stop()
        time.sleep(outage)
        broker = start_broker(work, port=port, extra_conf=persist)
        deadline = time.monotonic() + 120
        while daemon.log_text().count('"connected to broker"') < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3 + 0.4 * requests)  # redeliveries, and second runs if any
        runs = Counter(_done_ids(daemon.log_text()))
        return sum(1 for rid in ids if runs[rid] > 1), len(ids)
    finally:
        daemon.stop()
        broker.stop()


def _done_ids(log: str) -> list[str]:
    out = []
    for line in log.splitlines():
        try:
            rec: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "request done":
            out.append(str(rec.get("request_id")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outage", type=float, nargs="+", default=[3.0, 20.0], help="seconds the broker is away")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=6, help="requests in flight at the restart (twice)")
    ap.add_argument("--probe-ms", type=float, default=20.0, help="between two probe requests (gap)")
    ap.add_argument("--only", choices=["gap", "twice"], default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rkllmd-restart-"))
    lib = build_fake("1.3", work)
    print(f"work dir {work}")
    for outage in args.outage:
        if args.only in (None, "gap"):
            gaps = [gap_round(work, lib, outage, args.probe_ms / 1000) for _ in range(args.rounds)]
            known = [g for g in gaps if g is not None]
            shown = " ".join(f"{g:.2f}" if g is not None else "none" for g in gaps)
            med = f"{statistics.median(known):.2f}" if known else "-"
            print(
                f"outage {outage:>5.1f} s  gap after the broker is back (s): {shown}  median {med}",
                flush=True,
            )
        if args.only in (None, "twice"):
            twice = [twice_round(work, lib, outage, args.requests) for _ in range(args.rounds)]
            shown = " ".join(f"{a}/{b}" for a, b in twice)
            print(f"outage {outage:>5.1f} s  requests run twice (persistence on): {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
