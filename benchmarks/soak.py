"""Soak: thousands of requests through one rkllmd process; prints its resident memory as it goes.

Not a test (nothing is asserted): a leak shows as RSS that keeps climbing after the first few
hundred requests instead of levelling off. It starts its own loopback mosquitto and rkllmd, on
the C double of the RKLLM runtime (needs gcc; fast, so the soak exercises rkllmd rather than a
model) or on the embedded SmolLM2 model through llama.cpp (``--model smollm2``; slow).

    .venv/bin/python benchmarks/soak.py --requests 5000 --every 500
    .venv/bin/python benchmarks/soak.py --model smollm2 --requests 300 --every 50 --max-tokens 8

Each round sends ``--inflight`` requests at once (MQTT v5, matched by correlation data), a mix
of good ones, bad ones (error replies) and, with a queue smaller than ``--inflight``, ``busy``
ones; RSS is that of rkllmd and its runtime worker process(es), from /proc.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rkllmd.bench.procfs import tree_rss_mb  # noqa: E402
from tests.helpers import DaemonProc, start_broker, write_config  # noqa: E402


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants (the runtime worker), in KiB."""
    return int((tree_rss_mb(pid) or 0.0) * 1024)


def config(work: Path, port: int, model: str, queue_size: int, max_tokens: int) -> Path:
    models: dict[str, Any]
    if model == "fake":
        from tests.fake_rkllm.build import build_fake

        lib = build_fake("1.3", work)
        weights = work / "fake-model.rkllm"
        weights.write_bytes(b"RKLLM fake model for the soak\n")
        models = {"fake": {"runtime": "rkllm", "path": str(weights), "library": str(lib)}}
    else:
        models = {"smollm2": {"runtime": "llamacpp", "max_context_len": 512, "temperature": 0.0}}
    return write_config(
        work / "soak.toml",
        {
            "mqtt": {"host": "127.0.0.1", "port": port, "base_topic": "soak", "client_id": "soak-rkllmd"},
            "log": {"level": "info", "format": "json"},
            "limits": {"queue_size": queue_size, "max_tokens": max_tokens, "max_payload_bytes": 8192},
            "models": models,
        },
    )


PAYLOADS: list[bytes] = [
    b'{"prompt": "one two three four five six seven eight", "stream": true}',
    b"a plain text prompt with a few words",
    b'{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]}',
    b'{"prompt": "no streaming this time", "stream": false, "transaction": {"n": 1}}',
    b'{"prompt": 42}',  # wrong_type
    b'{"prompt": "x", "model": "nope"}',  # unknown_model
    b'{"prompt": "unterminated',  # bad_json
    b"\xff\xfe",  # bad_request (UTF-8)
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--every", type=int, default=500, help="print a line every N requests")
    ap.add_argument("--inflight", type=int, default=16, help="requests sent at once per round")
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model", choices=["fake", "smollm2"], default="fake")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one round")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rkllmd-soak-"))
    broker = start_broker(work, extra_conf="max_queued_messages 100000\n")
    daemon = DaemonProc(config(work, broker.port, args.model, args.queue_size, args.max_tokens), work)
    replies: queue.Queue[tuple[bytes, dict[str, Any]]] = queue.Queue()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        corr = getattr(m.properties, "CorrelationData", None) or b""
        replies.put((bytes(corr), json.loads(m.payload)))

    client.on_message = on_message
    try:
        daemon.wait_log('"rkllmd ready"', timeout=120)
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe("soak-reply", qos=1)
        time.sleep(0.3)
        pid = daemon.proc.pid
        print(f"rkllmd pid {pid}, model {args.model}, log {daemon.log_path}")
        print(f"{'requests':>9} {'rss_mib':>8} {'delta':>7} {'ok':>7} {'errors':>7} {'busy':>6} {'req/s':>7}")
        sent = ok = errors = busy = 0
        first_rss: int | None = None
        started = time.monotonic()
        next_print = 0
        while sent < args.requests:
            n = min(args.inflight, args.requests - sent)
            want = set()
            for i in range(n):
                corr = f"{sent + i}".encode()
                want.add(corr)
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = "soak-reply"
                props.CorrelationData = corr
                client.publish(
                    "soak/request/generate", PAYLOADS[(sent + i) % len(PAYLOADS)], qos=1, properties=props
                )
            deadline = time.monotonic() + args.timeout
            while want:
                corr, body = replies.get(timeout=max(0.1, deadline - time.monotonic()))
                if corr in want:
                    want.discard(corr)
                    if body["status"] == "ok":
                        ok += 1
                    elif body["code"] == "busy":
                        busy += 1
                    else:
                        errors += 1
            sent += n
            if sent >= next_print or sent >= args.requests:
                rss = rss_kb(pid)
                first_rss = first_rss if first_rss is not None else rss
                rate = sent / (time.monotonic() - started)
                print(
                    f"{sent:>9} {rss / 1024:>8.1f} {(rss - first_rss) / 1024:>+7.1f} {ok:>7} {errors:>7} "
                    f"{busy:>6} {rate:>7.0f}",
                    flush=True,
                )
                next_print += args.every
        return 0
    except queue.Empty:
        print("a round was not answered in time: see the rkllmd log", file=sys.stderr)
        return 1
    finally:
        client.loop_stop()
        code = daemon.stop()
        broker.stop()
        print(f"rkllmd exited with {code}")


if __name__ == "__main__":
    sys.exit(main())
