"""Time to the first sentence: what someone talking to a speech pipeline waits for, over MQTT.

Starts a loopback mosquitto (or uses --host/--port) and rkllmd on SmolLM2 (the embedded model,
llama.cpp) and on the RKLLM C double (tests/fake_rkllm, paced by [[delay_ms=N]] and emitting a
fixed Home Assistant-style answer with [[say=BASE64]]), then sends generate requests with
``"sentences": true`` and measures, from the publish of each request, at the client:

- TTFT: the first stream chunk on ``<base>/stream/<id>``;
- first sentence: the first message on ``<base>/stream/<id>/sentences`` (what a TTS can start on);
- total: the final reply.

Prints the medians per case (and every run with --verbose); asserts nothing.

    .venv/bin/python benchmarks/first_sentence.py                 # both models, 5 runs per case
    .venv/bin/python benchmarks/first_sentence.py --only double --rate 16
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
BASE = "firstsentence"

# What Home Assistant's agent typically says after a turn: short sentences, a number, a question.
HA_ANSWER = (
    "The kitchen light is now on. The living room is at 21.5 degrees, and the front door is locked. "
    "Is there anything else you would like me to do?"
)
SMOL_PROMPTS = {
    "capital": "What is the capital of France? Answer in two sentences.",
    "lights": "I am leaving the house. Which lights should I turn off, and why? Answer briefly.",
    "story": "Tell me a very short story about a robot who learns to paint.",
}


@dataclass
class Turn:
    ttft_ms: float | None = None
    first_sentence_ms: float | None = None
    total_ms: float | None = None
    first_sentence: str = ""
    sentences: list[str] = field(default_factory=list)
    server_ttft_ms: float | None = None


class Client:
    """An MQTT v5 client that timestamps what arrives for one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.q: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"first-sentence-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.on_message = lambda c, u, m: self.q.put((time.monotonic(), m.topic, bytes(m.payload)))
        self.c.connect(host, port)
        self.c.loop_start()
        self.c.subscribe([(f"{BASE}/stream/#", 1), (f"{BASE}-reply/#", 1)])
        time.sleep(0.3)  # the SUBACK

    def turn(self, payload: dict[str, Any], timeout: float = 300.0) -> Turn:
        rid = f"fs-{uuid.uuid4().hex[:10]}"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{BASE}-reply/{rid}"  # never under the base topic (refused)
        t0 = time.monotonic()
        body = json.dumps({**payload, "id": rid, "sentences": True})
        self.c.publish(f"{BASE}/request/generate", body, qos=1, properties=props)
        out = Turn()
        deadline = t0 + timeout
        while True:
            at, topic, data = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            ms = (at - t0) * 1000
            if topic == f"{BASE}/stream/{rid}" and out.ttft_ms is None and b'"delta"' in data:
                out.ttft_ms = ms
            elif topic == f"{BASE}/stream/{rid}/sentences" and data:
                if out.first_sentence_ms is None:
                    out.first_sentence_ms, out.first_sentence = ms, data.decode()
                out.sentences.append(data.decode())
            elif topic == f"{BASE}-reply/{rid}":
                out.total_ms = ms
                reply = json.loads(data)
                if reply.get("status") != "ok":
                    raise RuntimeError(f"request failed: {reply}")
                out.server_ttft_ms = (reply["data"].get("timings") or {}).get("ttft_ms")
                return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def start_daemon(workdir: Path, host: str, port: int, models: dict[str, Any] | None) -> Any:
    from rkllmd.bench.daemonproc import DaemonProcess, to_toml

    cfg: dict[str, Any] = {
        "mqtt": {
            "host": host,
            "port": port,
            "base_topic": BASE,
            "client_id": f"{BASE}-{uuid.uuid4().hex[:4]}",
        },
        "log": {"format": "json", "level": "info"},
        "limits": {"max_tokens": 256, "first_token_timeout_s": 120.0, "total_timeout_s": 300.0},
    }
    if models:
        cfg["default_model"] = next(iter(models))
        cfg["models"] = models
    path = workdir / "rkllmd.toml"
    path.write_text(to_toml(cfg))
    d = DaemonProcess(path, workdir / "rkllmd.log")
    d.wait_logged("model loaded", "rkllmd did not load its model")
    return d


def run_cases(
    client: Client, cases: dict[str, dict[str, Any]], runs: int, verbose: bool
) -> dict[str, list[Turn]]:
    results: dict[str, list[Turn]] = {}
    for name, payload in cases.items():
        client.turn(payload)  # warm-up, not counted
        results[name] = [client.turn(payload) for _ in range(runs)]
        if verbose:
            for t in results[name]:
                print(
                    f"  {name}: ttft {t.ttft_ms} first sentence {t.first_sentence_ms} total {t.total_ms} ms"
                )
    return results


def median(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{statistics.median(got):.0f}" if got else "-"


def table(title: str, results: dict[str, list[Turn]]) -> str:
    lines = [
        f"{title}",
        "| case | TTFT ms | first sentence ms | total ms | first sentence (chars) | sentences |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, turns in results.items():
        ttft, first = median([t.ttft_ms for t in turns]), median([t.first_sentence_ms for t in turns])
        total, said = median([t.total_ms for t in turns]), turns[0]
        lines.append(
            f"| {name} | {ttft} | {first} | {total} | {len(said.first_sentence)} | {len(said.sentences)} |"
        )
    lines.append("")
    for name, turns in results.items():
        lines.append(f"{name}, first sentence: {turns[0].first_sentence!r}")
    return "\n".join(lines)


def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["smollm2", "double"], help="one of the two models (default both)")
    ap.add_argument("--runs", type=int, default=5, help="measured requests per case (after one warm-up)")
    ap.add_argument(
        "--rate", type=float, default=16.0, help="the double's tokens per second (16: a 1.5B on RK3588)"
    )
    ap.add_argument("--chunk", type=int, default=4, help="the double's bytes per token")
    ap.add_argument("--host", help="broker host (default: start a loopback mosquitto)")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--verbose", action="store_true", help="print every run")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))  # the double's build lives with the tests
    from rkllmd.bench.broker import LocalBroker
    from tests.fake_rkllm.build import build_fake

    print(f"time to the first sentence over MQTT on {machine()}")
    with tempfile.TemporaryDirectory(prefix="first-sentence-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work) if args.host is None else None
        host, port = (broker.host, broker.port) if broker else (args.host, args.port)
        try:
            if args.only in (None, "double"):
                lib = build_fake("1.3", work)
                model_file = work / "fake.rkllm"
                model_file.write_bytes(b"RKLLM fake model for benchmarks\n")
                models = {"double": {"runtime": "rkllm", "path": str(model_file), "library": str(lib)}}
                d = start_daemon(work, host, port, models)
                client = Client(host, port)
                try:
                    said = base64.b64encode(HA_ANSWER.encode()).decode()
                    delay = round(1000 / args.rate)
                    prompt = f"[[say={said}]] [[chunk={args.chunk}]] [[delay_ms={delay}]]"
                    res = run_cases(client, {"ha-answer": {"prompt": prompt}}, args.runs, args.verbose)
                finally:
                    client.close()
                    d.stop()
                rate = (
                    f"{args.rate:g} tok/s, {args.chunk} bytes per token, first token after one token's delay"
                )
                print(table(f"\nRKLLM C double ({rate}), {args.runs} runs, medians", res))
            if args.only in (None, "smollm2"):
                d = start_daemon(work, host, port, None)
                client = Client(host, port)
                try:
                    cases = {
                        k: {"prompt": p, "temperature": 0, "max_tokens": 160} for k, p in SMOL_PROMPTS.items()
                    }
                    res = run_cases(client, cases, args.runs, args.verbose)
                finally:
                    client.close()
                    d.stop()
                print(
                    table(
                        f"\nSmolLM2-135M (llama.cpp, embedded), temperature 0, {args.runs} runs, medians", res
                    )
                )
        finally:
            if broker is not None:
                broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
