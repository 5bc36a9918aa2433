"""How long a voice request waits when a client has sent its embedding batches all at once.

Open WebUI (0.6) embeds a document's batches concurrently, so several ``embed`` jobs are queued
when Home Assistant sends a spoken request. This sends ``--batches`` embed requests at once to a
real ``rkllmd run`` (loopback mosquitto), then, once the first batch runs, one ``generate``; it
prints the generate's request-to-reply time, how many batches were answered before it, and when
the last batch was answered. Twice: ``limits.background_overtakes = 0`` (arrival order, as before
the queue let generations pass) and the default 4 (docs/EMBEDDINGS.md).

Models: the RKLLM C double (tests/fake_rkllm; each text ``--delay-ms`` long, an NPU's prefill
stand-in, a chat and an embedding model from the same double) or SmolLM2-135M through llama.cpp
(the embedded chat model and the same weights as a mean-pooling embedding model: each job that
follows the other kind loads its model).

    PYTHONPATH=. .venv/bin/python benchmarks/voice_behind_embeddings.py [--model double|smollm2]
        [--batches 8] [--texts 8] [--delay-ms 250]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE = "voicebench"
SENTENCES = [
    "The kitchen light turns on at sunset every evening.",
    "Remind me to water the tomatoes in the greenhouse tomorrow.",
    "What was the temperature in the living room this morning?",
    "The washing machine finished its cycle twenty minutes ago.",
]


def start_daemon(work: Path, host: str, port: int, models: dict[str, Any], overtakes: int) -> Any:
    from rkllmd.bench.daemonproc import DaemonProcess, to_toml

    cfg = {
        "default_model": "chat",
        "mqtt": {"host": host, "port": port, "base_topic": BASE, "client_id": f"{BASE}-d{overtakes}"},
        "log": {"format": "json", "level": "info"},
        "limits": {"max_payload_bytes": 1 << 20, "total_timeout_s": 600.0, "background_overtakes": overtakes},
        "models": models,
    }
    path = work / f"rkllmd-{overtakes}.toml"
    path.write_text(to_toml(cfg))
    d = DaemonProcess(path, work / f"rkllmd-{overtakes}.log")
    d.wait_logged("rkllmd ready", "rkllmd did not start")
    return d


def run_once(host: str, port: int, batches: int, texts: list[str]) -> dict[str, Any]:
    """The batches at once, the voice request behind them; arrival times of every reply."""
    from rkllmd.bench.mqttclient import BenchClient

    client = BenchClient(host, port, BASE)
    try:
        t0 = time.perf_counter()
        for i in range(batches):
            client._publish("embed", {"id": f"e{i}", "model": "emb", "input": texts}, f"e{i}")
        time.sleep(0.5)  # the first batch has started; the others wait
        voice = {"id": "voice", "model": "chat", "prompt": "turn on the kitchen light", "max_tokens": 16}
        t_voice = client._publish("generate", {**voice, "stream": False}, "voice")
        order: list[tuple[str, float, str]] = []
        deadline = time.monotonic() + 1800
        while len(order) < batches + 1:
            a = client._next(deadline, "the replies")
            if a.topic == client.reply_topic and a.corr is not None:
                status = "ok" if b'"status": "ok"' in a.payload or b'"status":"ok"' in a.payload else "error"
                order.append((a.corr.decode(), a.t, status))
    finally:
        client.close()
    ids = [rid for rid, _, _ in order]
    voice_at = next(t for rid, t, _ in order if rid == "voice")
    return {
        "voice_s": voice_at - t_voice,
        "before": ids.index("voice"),
        "ok": sum(s == "ok" for rid, _, s in order if rid != "voice"),
        "voice_ok": next(s for rid, _, s in order if rid == "voice") == "ok",
        "all_s": max(t for _, t, _ in order) - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["double", "smollm2"], default="double")
    ap.add_argument("--batches", type=int, default=8, help="embed requests sent at once (<= queue_size + 1)")
    ap.add_argument("--texts", type=int, default=8, help="texts per batch")
    ap.add_argument("--delay-ms", type=int, default=250, help="the double's time per text")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))  # the double's build lives with the tests
    from rkllmd.bench.broker import LocalBroker
    from tests.fake_rkllm.build import build_fake

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.batches} embed batches of {args.texts} texts sent at once, then one generate; "
          f"model {args.model}, {cpus} CPUs")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="voice-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work)
        try:
            if args.model == "double":
                lib = build_fake("1.3", work)
                model_file = work / "fake.rkllm"
                model_file.write_bytes(b"RKLLM fake model for benchmarks\n")
                common = {"runtime": "rkllm", "path": str(model_file), "library": str(lib)}
                models = {"chat": common, "emb": {**common, "kind": "embedding"}}
                texts = [f"{SENTENCES[i % 4]} [[delay_ms={args.delay_ms}]]" for i in range(args.texts)]
            else:
                emb = {"runtime": "llamacpp", "kind": "embedding", "pooling": "mean", "max_context_len": 512}
                models = {"chat": {"runtime": "llamacpp"}, "emb": emb}
                texts = [f"{SENTENCES[i % 4]} ({i})" for i in range(args.texts)]
            for overtakes in (0, 4):
                d = start_daemon(work, broker.host, broker.port, models, overtakes)
                try:
                    rows.append((overtakes, run_once(broker.host, broker.port, args.batches, texts)))
                finally:
                    d.stop()
        finally:
            broker.stop()
    print("\n| background_overtakes | voice reply s | batches before it | batches ok | all answered s |")
    print("|---:|---:|---:|---:|---:|")
    for overtakes, r in rows:
        voice = f"{r['voice_s']:.2f}" + ("" if r["voice_ok"] else " (error)")
        print(f"| {overtakes} | {voice} | {r['before']} | {r['ok']}/{args.batches} | {r['all_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
