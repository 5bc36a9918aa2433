"""A fleet's throughput: requests/s and TTFT for 1, 2 and 3 boards behind one request topic.

Starts a loopback mosquitto and N rkllmd boards (fleet group ``bench``) on the RKLLM C double
at a fixed token rate, then lets ``--clients`` clients each send ``--per-client`` requests one
after another (closed loop: the next one when the last one is answered) to the group's topic.
Prints requests/s, TTFT p50/p99 (publish to first stream chunk, queueing included) and how the
broker spread the requests, and the ratio of each fleet's throughput to one board's. Figures
are printed and written to --out, never asserted: they depend on the machine and its load.

    .venv/bin/python benchmarks/fleet.py                     # about two minutes on two cores
    .venv/bin/python benchmarks/fleet.py --boards 1,3 --per-client 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _board_config(lib: Path, model: Path, host: str, port: int, base: str, node: str) -> dict[str, Any]:
    return {
        "default_model": "fake",
        "mqtt": {
            "host": host,
            "port": port,
            "base_topic": base,
            "client_id": f"{base}-{node}",
            "clean_start": False,
        },
        "log": {"level": "info", "format": "json"},
        "limits": {"queue_size": 8},
        "models": {"fake": {"runtime": "rkllm", "path": str(model), "library": str(lib)}},
        "fleet": {"group": "bench", "node_id": node},
    }


def _client(host: str, port: int, base: str, n: int, prompt: str, out: queue.Queue[dict[str, Any]]) -> None:
    """One client: ``n`` requests one after another; each result goes to ``out``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from rkllmd.mqttconnect import set_nodelay

    cid = "fc-" + uuid.uuid4().hex[:8]
    reply_topic = f"{base}-bench/{cid}"  # outside rkllmd's own topics, which no reply may name
    inbox: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: set_nodelay(cl)
    c.on_message = lambda cl, u, m: inbox.put((time.perf_counter(), m.topic, bytes(m.payload)))
    c.connect(host, port)
    c.loop_start()
    c.subscribe([(reply_topic, 1), (f"{base}/stream/+", 0)])  # every stream; ours picked below
    time.sleep(0.3)
    try:
        for i in range(n):
            rid = f"{cid}-{i}"
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_topic
            t0 = time.perf_counter()
            c.publish(
                f"{base}/request/generate", json.dumps({"id": rid, "prompt": prompt}), qos=1, properties=props
            )
            first = None
            while True:
                t, topic, payload = inbox.get(timeout=120)
                if topic == f"{base}/stream/{rid}" and first is None:
                    first = t
                elif topic == reply_topic:
                    reply = json.loads(payload)
                    if reply.get("id") != rid:
                        continue
                    out.put(
                        {
                            "ttft_ms": (first - t0) * 1000 if first else None,
                            "total_ms": (t - t0) * 1000,
                            "node": reply.get("node"),
                            "status": reply.get("status"),
                            "code": reply.get("code"),
                        }
                    )
                    break
    finally:
        c.disconnect()
        c.loop_stop()


def _percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_one(boards: int, lib: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rkllmd.bench.broker import LocalBroker
    from rkllmd.bench.daemonproc import DaemonProcess, to_toml

    folder = work / f"fleet{boards}"
    folder.mkdir()
    broker = LocalBroker(folder)
    base = f"fb{uuid.uuid4().hex[:6]}"
    model = folder / "fake.rkllm"
    model.write_bytes(b"RKLLM fake model for the fleet benchmark\n")
    procs = []
    try:
        for i in range(boards):
            cfg = folder / f"b{i}.toml"
            cfg.write_text(to_toml(_board_config(lib, model, broker.host, broker.port, base, f"b{i}")))
            procs.append(DaemonProcess(cfg, folder / f"b{i}.log"))
        deadline = time.monotonic() + 60
        while not all(
            '"model loaded"' in p.log_tail(10**6) and "rkllmd ready" in p.log_tail(10**6) for p in procs
        ):
            dead = [p for p in procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"a board did not start:\n{(dead or procs)[0].log_tail()}")
            time.sleep(0.1)
        time.sleep(1.0)  # every board's model loaded and its subscriptions in place
        delay_ms = round(1000 / args.rate)
        prompt = f"[[delay_ms={delay_ms}]] [[len={args.tokens}]] fleet benchmark words for the double"
        out: queue.Queue[dict[str, Any]] = queue.Queue()
        threads = [
            threading.Thread(
                target=_client, args=(broker.host, broker.port, base, args.per_client, prompt, out)
            )
            for _ in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        results = [out.get_nowait() for _ in range(out.qsize())]
    finally:
        for p in procs:
            p.stop()
        broker.stop()
    ttfts = [r["ttft_ms"] for r in results if r["ttft_ms"] is not None]
    return {
        "boards": boards,
        "requests": len(results),
        "ok": sum(1 for r in results if r["status"] == "ok"),
        "busy": sum(1 for r in results if r["code"] == "busy"),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "ttft_p50_ms": round(_percentile(ttfts, 50) or 0, 1),
        "ttft_p99_ms": round(_percentile(ttfts, 99) or 0, 1),
        "served": dict(sorted(Counter(str(r["node"]) for r in results).items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="1,2,3", help="fleet sizes, comma-separated")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=4, help="requests each client sends, one after another")
    ap.add_argument("--rate", type=float, default=30.0, help="the double's tok/s")
    ap.add_argument("--tokens", type=int, default=30, help="tokens per answer")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.fake_rkllm.build import build_fake

    rows = []
    with tempfile.TemporaryDirectory(prefix="rkllmd-fleet-") as tmp:
        lib = build_fake("1.3", Path(tmp))
        for n in [int(x) for x in args.boards.split(",") if x.strip()]:
            row = run_one(n, lib, Path(tmp), args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    one = next((r["requests_per_s"] for r in rows if r["boards"] == 1), None)
    lines = [
        f"fleet benchmark, {platform.node()} ({platform.machine()}), "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"{args.clients} clients x {args.per_client} requests, "
        f"double at {args.rate:g} tok/s x {args.tokens} tokens",
        "",
        "| boards | requests/s | vs 1 board | TTFT p50 | TTFT p99 | busy | served per board |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['requests_per_s'] / one:.2f}x" if one else "-"
        lines.append(
            f"| {r['boards']} | {r['requests_per_s']:.2f} | {ratio} | {r['ttft_p50_ms']:.0f} ms | "
            f"{r['ttft_p99_ms']:.0f} ms | {r['busy']} | {r['served']} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        (args.out / f"fleet-{stamp}.json").write_text(json.dumps(rows, indent=2))
        (args.out / f"fleet-{stamp}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
