"""A fleet's throughput (1, 2, 3 boards) and what a board's death costs it.

Starts a loopback mosquitto and N rkllmd boards (fleet group ``bench``) on the RKLLM C double
at a fixed token rate, then lets ``--clients`` clients each send ``--per-client`` requests one
after another (closed loop: the next one when the last one is answered) to the group's topic.
Prints requests/s, TTFT p50/p99 (publish to first stream chunk, queueing included) and how the
broker spread the requests, and the ratio of each fleet's throughput to one board's. Figures
are printed and written to --out, never asserted: they depend on the machine and its load.

Then (``--death``) three boards with clients publishing at a steady pace (open loop): one board
is killed with -9 and left dead. Printed: the time from the kill until its share is served by the
others (the answer of the request it held that came last: the grace, the takeover, the queue),
requests lost (no answer by the end; goal 0), answered twice, and the replies by code, with kept
sessions (the leader takes the dead board's session over after ``--grace`` s) and with clean ones.

    .venv/bin/python benchmarks/fleet.py                     # about two minutes on two cores
    .venv/bin/python benchmarks/fleet.py --boards 1,3 --per-client 8
    .venv/bin/python benchmarks/fleet.py --boards '' --death --grace 60 --dead-s 90
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


def _board_config(
    lib: Path, model: Path, host: str, port: int, base: str, node: str, **fleet: Any
) -> dict[str, Any]:
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
        "fleet": {"group": "bench", "node_id": node, **fleet},
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


def _paced_client(
    host: str, port: int, base: str, rate: float, seconds: float, prompt: str, kill_at: float, kill: Any
) -> tuple[dict[str, float], dict[str, list[tuple[float, str]]], float]:
    """Open loop: ``rate`` requests/s for ``seconds``; ``kill()`` at ``kill_at`` s. Returns when each
    id was sent, every reply per id (time, code), and the kill's time (perf_counter)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cid = "fd-" + uuid.uuid4().hex[:8]
    reply_topic = f"{base}-bench/{cid}"
    sent: dict[str, float] = {}
    got: dict[str, list[tuple[float, str]]] = {}
    lock = threading.Lock()

    def on_message(cl: Any, u: Any, m: Any) -> None:
        reply = json.loads(m.payload)
        with lock:
            got.setdefault(str(reply.get("id")), []).append(
                (time.perf_counter(), str(reply.get("code") or reply.get("status")))
            )

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect(host, port)
    c.loop_start()
    c.subscribe(reply_topic, 1)
    time.sleep(0.3)
    t0 = time.perf_counter()
    killed_at = 0.0
    i = 0
    while (now := time.perf_counter() - t0) < seconds:
        if not killed_at and now >= kill_at:
            kill()
            killed_at = time.perf_counter()
        rid = f"{cid}-{i}"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        sent[rid] = time.perf_counter()
        c.publish(
            f"{base}/request/generate", json.dumps({"id": rid, "prompt": prompt}), qos=1, properties=props
        )
        i += 1
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    return sent, got, killed_at


def run_death(lib: Path, work: Path, args: argparse.Namespace, clean: bool) -> dict[str, Any]:
    """Three boards; one killed with -9 at 5 s and left dead (module docstring)."""
    from rkllmd.bench.broker import LocalBroker
    from rkllmd.bench.daemonproc import DaemonProcess, to_toml

    folder = work / f"death-{'clean' if clean else 'kept'}"
    folder.mkdir()
    broker = LocalBroker(folder)
    base = f"fd{uuid.uuid4().hex[:6]}"
    model = folder / "fake.rkllm"
    model.write_bytes(b"RKLLM fake model for the fleet benchmark\n")
    procs = []
    try:
        for i in range(3):
            cfg = folder / f"b{i}.toml"
            conf = _board_config(
                lib, model, broker.host, broker.port, base, f"b{i}", takeover_grace_s=args.grace
            )
            conf["mqtt"]["clean_start"] = clean
            conf["state_dir"] = str(folder / f"state-b{i}")
            cfg.write_text(to_toml(conf))
            procs.append(DaemonProcess(cfg, folder / f"b{i}.log"))
        deadline = time.monotonic() + 60
        while not all("rkllmd ready" in p.log_tail(10**6) for p in procs):
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                raise RuntimeError("a board did not start")
            time.sleep(0.1)
        time.sleep(1.0)
        delay_ms = round(1000 / args.rate)
        prompt = f"[[delay_ms={delay_ms}]] [[len={args.tokens}]] fleet death benchmark"
        victim = procs[2]  # not the leader: the leader's death adds its own Will's moment

        def kill() -> None:
            victim.proc.kill()

        seconds = 5.0 + args.dead_s
        sent, got, killed_at = _paced_client(
            broker.host, broker.port, base, args.death_rate, seconds, prompt, 5.0, kill
        )
        time.sleep(args.grace + 20.0)  # what the dead board held: after the grace, the takeover, the queue
    finally:
        for p in procs:
            if p.alive():
                p.stop()
        broker.stop()
    answered = {rid: replies for rid, replies in got.items() if rid in sent}
    lost = [rid for rid in sent if rid not in answered]
    twice = [rid for rid, r in answered.items() if len(r) > 1]
    normal = sorted(r[0][0] - sent[rid] for rid, r in answered.items() if sent[rid] < killed_at - 2)
    typical = normal[len(normal) // 2] if normal else 0.0
    held = [r[0][0] for rid, r in answered.items() if r[0][0] - sent[rid] > 3 * typical + 1.0]
    codes = Counter(r[0][1] for r in answered.values())
    return {
        "session": "clean" if clean else "kept",
        "grace_s": args.grace,
        "dead_s": args.dead_s,
        "requests": len(sent),
        "lost": len(lost),
        "answered_twice": len(twice),
        "codes": dict(codes),
        "death_to_first_of_share_s": round(min(held) - killed_at, 2) if held else 0.0,
        "death_to_share_served_s": round(max(held) - killed_at, 2) if held else 0.0,
        "typical_latency_s": round(typical, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="1,2,3", help="fleet sizes, comma-separated")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=4, help="requests each client sends, one after another")
    ap.add_argument("--rate", type=float, default=30.0, help="the double's tok/s")
    ap.add_argument("--tokens", type=int, default=30, help="tokens per answer")
    ap.add_argument("--death", action="store_true", help="also kill a board of three and leave it dead")
    ap.add_argument("--grace", type=float, default=10.0, help="fleet.takeover_grace_s for --death")
    ap.add_argument("--dead-s", type=float, default=30.0, help="how long clients send after the kill")
    ap.add_argument("--death-rate", type=float, default=2.0, help="requests/s sent during --death")
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
        deaths = []
        if args.death:
            for clean in (False, True):
                deaths.append(run_death(lib, Path(tmp), args, clean))
                print(json.dumps(deaths[-1]), flush=True)
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
    if deaths:
        lines += [
            "",
            f"a board of three killed -9 and left dead, {args.death_rate:g} requests/s",
            "",
            "| session | grace | requests | lost | answered twice | death to first of its share | "
            "to all of it | replies |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in deaths:
            lines.append(
                f"| {d['session']} | {d['grace_s']:g} s | {d['requests']} | {d['lost']} | "
                f"{d['answered_twice']} | {d['death_to_first_of_share_s']:g} s | "
                f"{d['death_to_share_served_s']:g} s | {d['codes']} |"
            )
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        (args.out / f"fleet-{stamp}.json").write_text(
            json.dumps({"throughput": rows, "death": deaths}, indent=2)
        )
        (args.out / f"fleet-{stamp}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
