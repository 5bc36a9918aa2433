"""Embeddings per second for 1, 8 and 64 inputs: the runtime called directly, and rkllmd over MQTT.

Two models: the RKLLM C double (tests/fake_rkllm, hidden states derived from the text, 1024
dimensions as Qwen3-Embedding-0.6B has, so what it measures is rkllmd's own cost: the ctypes
copy, pooling, the worker pipe, JSON and MQTT) and the real SmolLM2-135M through llama.cpp
(576 dimensions, mean pooling). For each batch size: the median time of ``--runs`` calls of
``Runtime.embed`` in this process and the median request-to-reply time of an ``embed`` request
to a real ``rkllmd run`` (worker process, loopback mosquitto), the two taken in turn so that
other load on the machine slows both alike; embeddings/s of each, and the daemon's share of the
request's time ((daemon - direct) / daemon).

    PYTHONPATH=. .venv/bin/python benchmarks/embeddings.py [--only double|smollm2] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE = "embbench"
SIZES = (1, 8, 64)
SENTENCES = [
    "The kitchen light turns on at sunset every evening.",
    "Remind me to water the tomatoes in the greenhouse tomorrow.",
    "What was the temperature in the living room this morning?",
    "The washing machine finished its cycle twenty minutes ago.",
    "Lock the front door and arm the alarm when everyone has left.",
    "The recipe needs two eggs, flour, butter and a pinch of salt.",
    "My train to the city leaves at half past seven on Mondays.",
    "The solar panels produced eleven kilowatt hours yesterday.",
]
EMBD = 1024  # the double's hidden size: Qwen3-Embedding-0.6B's


def texts(n: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(n)]


def start_daemon(work: Path, host: str, port: int, models: dict[str, Any]) -> Any:
    from rkllmd.bench.daemonproc import DaemonProcess, to_toml

    cfg = {
        "default_model": next(iter(models)),
        "mqtt": {"host": host, "port": port, "base_topic": BASE, "client_id": f"{BASE}-d"},
        "log": {"format": "json", "level": "info"},
        "limits": {"max_payload_bytes": 1 << 20, "total_timeout_s": 600.0},
        "models": models,
    }
    path = work / "rkllmd.toml"
    path.write_text(to_toml(cfg))
    d = DaemonProcess(path, work / "rkllmd.log", env={"FAKE_RKLLM_EMBD_SIZE": str(EMBD)})
    d.wait_logged("model loaded", "rkllmd did not load its model")
    return d


def measure(
    rt: Any, work: Path, host: str, port: int, models: dict[str, Any], runs: int
) -> tuple[dict[int, float], dict[int, float]]:
    """Medians of the direct call and of the request over MQTT, the two taken in turn, run by run,
    so that a machine busy with other work slows both alike."""
    from rkllmd.bench.mqttclient import BenchClient

    rt.open()
    d = start_daemon(work, host, port, models)
    client = BenchClient(host, port, BASE)

    def over_mqtt(n: int) -> None:
        reply = client.command("embed", {"input": texts(n), "encoding": "base64"})
        if reply.get("status") != "ok" or len(reply["data"]["embeddings"]) != n:
            raise RuntimeError(f"embed failed: {reply}")

    direct: dict[int, float] = {}
    daemon: dict[int, float] = {}
    try:
        for n in SIZES:
            pair: list[tuple[float, float]] = []
            for i in range(runs + 1):  # the first pair warms up, not counted
                t0 = time.perf_counter()
                rt.embed(texts(n), lambda _t, _i: None)
                t1 = time.perf_counter()
                over_mqtt(n)
                if i:
                    pair.append((t1 - t0, time.perf_counter() - t1))
            direct[n] = statistics.median(p[0] for p in pair)
            daemon[n] = statistics.median(p[1] for p in pair)
    finally:
        client.close()
        d.stop()
        rt.close()
    return direct, daemon


def table(title: str, dir_s: dict[int, float], mqtt_s: dict[int, float]) -> str:
    rows = [
        f"\n{title}",
        "| inputs | direct ms | direct emb/s | rkllmd ms | rkllmd emb/s | daemon's share |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        a, b = dir_s[n], mqtt_s[n]
        share = (b - a) / b if b > 0 else 0.0
        rows.append(f"| {n} | {a * 1e3:.1f} | {n / a:.0f} | {b * 1e3:.1f} | {n / b:.0f} | {share:.0%} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["double", "smollm2"])
    ap.add_argument("--runs", type=int, default=5, help="measured calls per batch size (after one warm-up)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))  # the double's build lives with the tests
    from rkllmd.bench.broker import LocalBroker
    from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
    from rkllmd.runtime.rkllm.runtime import RkllmRuntime
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings
    from tests.fake_rkllm.build import build_fake

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"embeddings/s, {args.runs} runs per size (medians), {cpus} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work)
        try:
            if args.only in (None, "double"):
                os.environ["FAKE_RKLLM_EMBD_SIZE"] = str(EMBD)  # read by the double at rkllm_init
                lib = build_fake("1.3", work)
                model_file = work / "fake.rkllm"
                model_file.write_bytes(b"RKLLM fake model for benchmarks\n")
                table_ = {
                    "runtime": "rkllm",
                    "path": str(model_file),
                    "library": str(lib),
                    "kind": "embedding",
                }
                cfg = RkllmModelSettings.model_validate(table_)
                rt = RkllmRuntime("double", cfg, RkllmSettings(), capture_stdout=True)
                d, m = measure(rt, work, broker.host, broker.port, {"double": table_}, args.runs)
                print(table(f"RKLLM C double ({EMBD} dimensions, last-token pooling)", d, m))
            if args.only in (None, "smollm2"):
                table_ = {
                    "runtime": "llamacpp",
                    "kind": "embedding",
                    "pooling": "mean",
                    "max_context_len": 512,
                }
                rt = LlamaCppRuntime("smollm2", LlamaCppModelSettings.model_validate(table_))
                d, m = measure(rt, work, broker.host, broker.port, {"smollm2": table_}, args.runs)
                print(table("SmolLM2-135M through llama.cpp (576 dimensions, mean pooling)", d, m))
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
