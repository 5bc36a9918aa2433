"""The daemon's own cost: rkllmd relaying tokens from a runtime of known speed to one subscriber.

The runtime is any library with the RKLLM ABI; ``benchmarks/relay.py`` passes the C double of
``tests/fake_rkllm``, whose prompt directives fix the token rate (``[[delay_ms=N]]``: it sleeps N
ms before each token, and spends no time on the prompt) and the length (``[[len=N]]``). So every
millisecond of TTFT beyond N, and every token per second short of 1000/N, is rkllmd's (and the
broker's). The figures are printed, not asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkllmd.bench import procfs
from rkllmd.bench.broker import LocalBroker
from rkllmd.bench.daemonproc import DaemonProcess, to_toml
from rkllmd.bench.mqttclient import BenchClient, Exchange
from rkllmd.bench.stats import percentile, stream_rate

UNTHROTTLED = 0.0


@dataclass
class RelayOptions:
    library: Path
    rates: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, UNTHROTTLED])
    tokens: int = 30  # per request at each rate
    per_rate: int = 5  # measured requests per rate, after one warm-up
    burst_tokens: int = 2000  # one long unthrottled answer: the most one subscriber receives
    requests: int = 2000  # short requests for RSS growth and the TTFT distribution
    host: str | None = None
    port: int | None = None


def _config(lib: Path, model_file: Path, host: str, port: int, base: str) -> dict[str, Any]:
    return {
        "default_model": "fake",
        "mqtt": {"host": host, "port": port, "base_topic": base, "client_id": base},
        "log": {"level": "info", "format": "json"},
        "limits": {"queue_size": 8, "max_tokens_cap": 8192, "max_payload_bytes": 65536},
        "models": {"fake": {"runtime": "rkllm", "path": str(model_file), "library": str(lib)}},
    }


def _prompt(delay_ms: int, tokens: int) -> str:
    return f"[[delay_ms={delay_ms}]] [[len={tokens}]] relay benchmark words for the double to echo"


def _generate(client: BenchClient, delay_ms: int, tokens: int) -> Exchange:
    ex = client.generate({"prompt": _prompt(delay_ms, tokens), "max_tokens": tokens}, timeout=120)
    if ex.reply.get("status") != "ok":
        raise RuntimeError(f"relay request failed: {ex.reply}")
    return ex


def _ttft_ms(ex: Exchange) -> float:
    return ((ex.delta_times[0] if ex.delta_times else ex.t_reply) - ex.t_publish) * 1e3


def _rate_row(client: BenchClient, pid: int, rate: float, opts: RelayOptions) -> dict[str, Any]:
    delay = round(1000 / rate) if rate else 0
    _generate(client, delay, opts.tokens)  # warm-up
    cpu0, runs = procfs.tree_cpu_seconds(pid) or 0.0, []
    for _ in range(opts.per_rate):
        runs.append(_generate(client, delay, opts.tokens))
    cpu = (procfs.tree_cpu_seconds(pid) or 0.0) - cpu0
    tokens = sum(len(ex.deltas) for ex in runs)
    received = [r for r in (stream_rate(ex.delta_times) for ex in runs) if r]
    runtime = [float(ex.reply["data"]["timings"].get("decode_tokens_per_s") or 0) for ex in runs]
    # The double sleeps `delay` ms before its first token; everything beyond that is added.
    added = [_ttft_ms(ex) - delay for ex in runs]
    med = percentile
    return {
        "rate": rate or "unthrottled",
        "delay_ms": delay,
        "requests": len(runs),
        "runtime_tps": med(runtime, 50),
        "received_tps": med(received, 50),
        "ratio": med(received, 50) / med(runtime, 50) if runtime and med(runtime, 50) else None,
        "ttft_added_p50_ms": med(added, 50),
        "ttft_added_p99_ms": med(added, 99),
        "cpu_ms_per_token": cpu * 1e3 / tokens if tokens else None,
    }


def _burst(client: BenchClient, opts: RelayOptions) -> dict[str, Any]:
    runs = [_generate(client, 0, opts.burst_tokens) for _ in range(3)]
    received = [stream_rate(ex.delta_times) or 0.0 for ex in runs]
    runtime = [float(ex.reply["data"]["timings"].get("decode_tokens_per_s") or 0) for ex in runs]
    return {
        "tokens": opts.burst_tokens,
        "received_tps_max": max(received),
        "received_tps_median": percentile(received, 50),
        "runtime_tps_median": percentile(runtime, 50),
        "complete": all(len(ex.deltas) == opts.burst_tokens for ex in runs),
    }


def _soak(client: BenchClient, pid: int, opts: RelayOptions) -> dict[str, Any]:
    """Many short unthrottled requests one after another: RSS over time, TTFT spread, CPU/token."""
    warm = max(1, opts.requests // 10)
    for _ in range(warm):
        _generate(client, 0, 16)
    rss0, cpu0, t0 = procfs.tree_rss_mb(pid) or 0.0, procfs.tree_cpu_seconds(pid) or 0.0, time.monotonic()
    ttft, tokens, curve = [], 0, [(0, rss0)]
    step = max(1, opts.requests // 10)
    for i in range(1, opts.requests + 1):
        ex = _generate(client, 0, 16)
        ttft.append(_ttft_ms(ex))
        tokens += len(ex.deltas)
        if i % step == 0 or i == opts.requests:
            curve.append((i, procfs.tree_rss_mb(pid) or 0.0))
    wall = time.monotonic() - t0
    cpu = (procfs.tree_cpu_seconds(pid) or 0.0) - cpu0
    rss1 = curve[-1][1]
    return {
        "requests": opts.requests,
        "warmup_requests": warm,
        "requests_per_s": opts.requests / wall if wall else None,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_max_ms": max(ttft) if ttft else None,
        "cpu_ms_per_token": cpu * 1e3 / tokens if tokens else None,
        "cpu_ms_per_request": cpu * 1e3 / opts.requests if opts.requests else None,
        "rss_start_mb": rss0,
        "rss_end_mb": rss1,
        "rss_growth_mb": rss1 - rss0,
        "rss_curve": curve,
    }


def run_relay(opts: RelayOptions) -> dict[str, Any]:
    """Start a broker (unless given), rkllmd on ``opts.library``, measure; returns the figures."""
    result: dict[str, Any] = {
        "machine": procfs.machine(),
        "options": {
            "rates": opts.rates,
            "tokens": opts.tokens,
            "per_rate": opts.per_rate,
            "burst_tokens": opts.burst_tokens,
            "requests": opts.requests,
        },
    }
    with tempfile.TemporaryDirectory(prefix="rkllmd-relay-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work) if opts.host is None else None
        host = broker.host if broker else str(opts.host)
        port = broker.port if broker else int(opts.port or 1883)
        model_file = work / "fake.rkllm"
        model_file.write_bytes(b"RKLLM model stand-in for the relay benchmark\n")
        base = f"relay{int(time.time())}"
        cfg = work / "relay.toml"
        cfg.write_text(to_toml(_config(opts.library, model_file, host, port, base)))
        daemon = DaemonProcess(cfg, work / "rkllmd.log")
        client: BenchClient | None = None
        try:
            client = BenchClient(host, port, base)
            client.wait_state("online", timeout=60)
            client.command("load", {"model": "fake"}, timeout=60)
            result["rates"] = [_rate_row(client, daemon.pid, r, opts) for r in opts.rates]
            result["burst"] = _burst(client, opts)
            result["soak"] = _soak(client, daemon.pid, opts)
            if broker is not None:
                result["broker_cpu_s"] = procfs.cpu_seconds(broker.proc.pid)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- rkllmd log tail ---\n{daemon.log_tail()}") from exc
        finally:
            if client is not None:
                client.close()
            daemon.stop()
            if broker is not None:
                broker.stop()
    return result
