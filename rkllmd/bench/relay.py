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

from rkllmd.bench import floor, procfs
from rkllmd.bench.broker import LocalBroker, free_port
from rkllmd.bench.daemonproc import DaemonProcess, to_toml
from rkllmd.bench.mqttclient import BenchClient, Exchange
from rkllmd.bench.relayhttp import HttpStreamClient, http_rate_row
from rkllmd.bench.stats import percentile

UNTHROTTLED = 0.0
HEADLINE_RATE = 30.0  # the rate of the CPU-per-token and TTFT headline figures
RATIO_RATE = 1000.0  # the rate of the headline ratio


@dataclass
class RelayOptions:
    library: Path
    rates: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 1000.0, UNTHROTTLED])
    tokens: int = 30  # per request at each rate
    per_rate: int = 5  # measured requests per rate, after one warm-up
    burst_tokens: int = 2000  # one long unthrottled answer: the most one subscriber receives
    requests: int = 2000  # short requests for RSS growth and the TTFT distribution
    idle_s: float = 30.0  # an idle spell with the model loaded: CPU and wake-ups while nothing runs
    #: one-token requests one at a time with a pause between: what a request costs beyond its tokens
    spaced_requests: int = 100
    host: str | None = None
    port: int | None = None
    #: extra tables for the daemon's config, e.g. {"stream": {"qos": 1}}
    config: dict[str, Any] = field(default_factory=dict)
    #: environment of the daemon under test, e.g. PYTHONPATH of another checkout to compare with
    daemon_env: dict[str, str] = field(default_factory=dict)
    #: also serve the OpenAI-compatible API and measure each rate over it (relayhttp.py)
    http: bool = False


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


def _tokens(ex: Exchange) -> int:
    """Tokens of the answer as the runtime counted them (a stream chunk may carry several)."""
    return int(ex.reply["data"]["usage"]["completion_tokens"])


def _intact(ex: Exchange) -> bool:
    """The stream chunks join to exactly the final reply's text."""
    return "".join(ex.deltas) == str(ex.reply["data"]["text"])


def _received_tps(ex: Exchange) -> float | None:
    """Tokens per second after the first, between the first and the last stream chunk."""
    t = ex.delta_times
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    return (_tokens(ex) - 1) / (t[-1] - t[0])


def _ttft_ms(ex: Exchange) -> float:
    return ((ex.delta_times[0] if ex.delta_times else ex.t_reply) - ex.t_publish) * 1e3


class _Cpu:
    """CPU seconds of rkllmd (its own process), its children (the runtime worker) and the broker."""

    def __init__(self, pid: int, broker_pid: int | None) -> None:
        self.pid, self.broker_pid = pid, broker_pid

    def read(self) -> dict[str, float]:
        tree = procfs.process_tree(self.pid)
        daemon = procfs.cpu_seconds(self.pid) or 0.0
        worker = sum(procfs.cpu_seconds(p) or 0.0 for p in tree if p != self.pid)
        broker = procfs.cpu_seconds(self.broker_pid) if self.broker_pid else None
        return {"daemon": daemon, "worker": worker, "broker": broker or 0.0}

    def woke(self) -> dict[str, float]:
        """Context switches so far of each part's threads (those alive now): its wake-ups."""
        tree = procfs.process_tree(self.pid)
        broker = float(procfs.switches([self.broker_pid])) if self.broker_pid else 0.0
        worker = float(procfs.switches([p for p in tree if p != self.pid]))
        return {"daemon": float(procfs.switches([self.pid])), "worker": worker, "broker": broker}

    @staticmethod
    def per_token(before: dict[str, float], after: dict[str, float], tokens: int) -> dict[str, float | None]:
        if not tokens:
            return {k: None for k in ("daemon", "worker", "broker", "total")}
        out: dict[str, float | None] = {k: (after[k] - before[k]) * 1e3 / tokens for k in before}
        out["total"] = sum(v for v in out.values() if v is not None)
        return out


def _rate_row(client: BenchClient, cpu: _Cpu, rate: float, opts: RelayOptions) -> dict[str, Any]:
    delay = round(1000 / rate) if rate else 0
    _generate(client, delay, opts.tokens)  # warm-up
    cpu0, woke0, runs = cpu.read(), cpu.woke(), []
    for _ in range(opts.per_rate):
        runs.append(_generate(client, delay, opts.tokens))
    tokens = sum(_tokens(ex) for ex in runs)
    per = _Cpu.per_token(cpu0, cpu.read(), tokens)
    woke1 = cpu.woke()
    wakeups = {k: (woke1[k] - woke0[k]) / tokens if tokens else None for k in woke0}
    received = [r for r in (_received_tps(ex) for ex in runs) if r]
    runtime = [float(ex.reply["data"]["timings"].get("decode_tokens_per_s") or 0) for ex in runs]
    # The double sleeps `delay` ms before its first token; everything beyond that is added.
    added = [_ttft_ms(ex) - delay for ex in runs]
    med = percentile
    return {
        "rate": rate or "unthrottled",
        "delay_ms": delay,
        "requests": len(runs),
        "runtime_tps": med(runtime, 50),
        # None when every run's tokens came in one chunk (the dispatcher joins what is queued):
        # too fast to tell a rate from, not a rate of zero
        "received_tps": med(received, 50) if received else None,
        "ratio": med(received, 50) / med(runtime, 50) if received and runtime and med(runtime, 50) else None,
        "ttft_added_p50_ms": med(added, 50),
        "ttft_added_p99_ms": med(added, 99),
        # rkllmd and its worker, as before the broker was counted too
        "cpu_ms_per_token": None if per["daemon"] is None else per["daemon"] + (per["worker"] or 0),
        "cpu_ms_per_token_parts": per,
        # the bench client's requests and replies included, as the broker's CPU is
        "wakeups_per_token_parts": wakeups,
        "wakeups_per_token": sum(v for v in wakeups.values() if v is not None) if tokens else None,
        "chunks_per_request": med([float(len(ex.deltas)) for ex in runs], 50),
        "intact": all(_intact(ex) for ex in runs),
    }


def _burst(client: BenchClient, opts: RelayOptions) -> dict[str, Any]:
    runs = [_generate(client, 0, opts.burst_tokens) for _ in range(3)]
    # Tokens over the time from the request to the last chunk: a chunk may carry many tokens.
    received = [_tokens(ex) / (ex.delta_times[-1] - ex.t_publish) if ex.delta_times else 0.0 for ex in runs]
    runtime = [float(ex.reply["data"]["timings"].get("decode_tokens_per_s") or 0) for ex in runs]
    return {
        "tokens": opts.burst_tokens,
        "received_tps_max": max(received),
        "received_tps_median": percentile(received, 50),
        "runtime_tps_median": percentile(runtime, 50),
        "chunks_median": percentile([float(len(ex.deltas)) for ex in runs], 50),
        "complete": all(_tokens(ex) == opts.burst_tokens and _intact(ex) for ex in runs),
    }


SPACING_S = 0.05  # between spaced requests: long enough for every thread to go back to sleep


def _spaced(client: BenchClient, cpu: _Cpu, opts: RelayOptions) -> dict[str, Any]:
    """One-token requests (the double's first token after 33 ms) ``SPACING_S`` apart: CPU and
    wake-ups per request of each part. The cost of a request beyond its tokens (admission, the
    queue, the reply and its acknowledgement, stats, log lines), each as cold as at 30 tok/s."""
    n = opts.spaced_requests
    _generate(client, 33, 1)
    time.sleep(SPACING_S)
    cpu0, woke0 = cpu.read(), cpu.woke()
    for _ in range(n):
        _generate(client, 33, 1)
        time.sleep(SPACING_S)
    cpu1, woke1 = cpu.read(), cpu.woke()
    return {
        "requests": n,
        "spacing_s": SPACING_S,
        "cpu_ms_per_request": {k: (cpu1[k] - cpu0[k]) * 1e3 / n for k in cpu0},
        "wakeups_per_request": {k: (woke1[k] - woke0[k]) / n for k in woke0},
    }


def _soak(client: BenchClient, cpu: _Cpu, pid: int, opts: RelayOptions) -> dict[str, Any]:
    """Many short unthrottled requests one after another: RSS over time, TTFT spread, CPU/token."""
    warm = max(1, opts.requests // 10)
    for _ in range(warm):
        _generate(client, 0, 16)
    rss0, cpu0, t0 = procfs.tree_rss_mb(pid) or 0.0, cpu.read(), time.monotonic()
    ttft, tokens, curve = [], 0, [(0, rss0)]
    step = max(1, opts.requests // 10)
    for i in range(1, opts.requests + 1):
        ex = _generate(client, 0, 16)
        ttft.append(_ttft_ms(ex))
        tokens += _tokens(ex)
        if i % step == 0 or i == opts.requests:
            curve.append((i, procfs.tree_rss_mb(pid) or 0.0))
    wall = time.monotonic() - t0
    cpu1 = cpu.read()
    spent = (cpu1["daemon"] + cpu1["worker"]) - (cpu0["daemon"] + cpu0["worker"])
    rss1 = curve[-1][1]
    return {
        "requests": opts.requests,
        "warmup_requests": warm,
        "requests_per_s": opts.requests / wall if wall else None,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_max_ms": max(ttft) if ttft else None,
        "cpu_ms_per_token": spent * 1e3 / tokens if tokens else None,
        "cpu_ms_per_request": spent * 1e3 / opts.requests if opts.requests else None,
        "broker_cpu_ms_per_token": (cpu1["broker"] - cpu0["broker"]) * 1e3 / tokens if tokens else None,
        "rss_start_mb": rss0,
        "rss_end_mb": rss1,
        "rss_growth_mb": rss1 - rss0,
        "rss_curve": curve,
    }


def _memory(pid: int) -> dict[str, Any]:
    """Every process of rkllmd's tree with the model loaded: what it is, its RSS and its PSS."""
    pids = procfs.process_tree(pid)
    procs = [
        {"pid": p, "what": procfs.describe(p), "rss_mb": procfs.rss_mb(p), "pss_mb": procfs.pss_mb(p)}
        for p in pids
    ]
    return {
        "processes": procs,
        "count": len(procs),
        "rss_mb": sum(p["rss_mb"] or 0.0 for p in procs),
        "pss_mb": sum(p["pss_mb"] or 0.0 for p in procs),
        # the pages they share (libpython's, libc's) once: what the tree occupies (None unless root)
        "unique_mb": procfs.unique_mb(pids),
    }


def _idle(cpu: _Cpu, pid: int, seconds: float) -> dict[str, Any]:
    """Nothing to do for ``seconds``, the model loaded: CPU used and thread wake-ups meanwhile."""
    tree = procfs.process_tree(pid)
    sw0 = {p: procfs.thread_switches(p) for p in tree}
    cpu0 = cpu.read()
    time.sleep(seconds)
    cpu1 = cpu.read()
    wakeups = []
    for p in tree:
        after = procfs.thread_switches(p)
        for tid, n in after.items():
            woke = n - sw0[p].get(tid, n)
            if woke:
                wakeups.append({"pid": p, "tid": tid, "wakeups": woke})
    spent = (cpu1["daemon"] + cpu1["worker"]) - (cpu0["daemon"] + cpu0["worker"])
    return {
        "seconds": seconds,
        "cpu_s": spent,
        "cpu_pct": spent / seconds * 100 if seconds else None,
        "broker_cpu_s": cpu1["broker"] - cpu0["broker"],
        "wakeups": sum(w["wakeups"] for w in wakeups),
        "threads_woken": wakeups,
        "threads": sum(len(procfs.thread_switches(p)) for p in tree),
    }


def _http_headline(r: dict[str, Any]) -> dict[str, Any]:
    """The HTTP rows' headline figures, ``openai_...`` and ``ollama_...``."""
    out: dict[str, Any] = {}
    for api in ("openai", "ollama"):
        rows = r.get(f"rates_{api}")
        if not rows:
            continue
        at30, at1000 = _row_at(rows, HEADLINE_RATE), _row_at(rows, RATIO_RATE)
        out[f"{api}_ttft_added_p50_ms"] = at30["ttft_added_p50_ms"] if at30 else None
        out[f"{api}_cpu_ms_per_token_30"] = at30["cpu_ms_per_token_parts"] if at30 else None
        out[f"{api}_ratio_1000"] = at1000["ratio"] if at1000 else None
        out[f"{api}_intact"] = all(row["intact"] for row in rows)
    return out


def _row_at(rows: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["rate"] == rate), None)


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of the comparison table: TTFT and CPU per token at 30 tok/s, the ceiling, the
    ratio at 1000 tok/s, the tree's memory with the model loaded, idle CPU."""
    rows = r.get("rates", [])
    at30, at1000 = _row_at(rows, HEADLINE_RATE), _row_at(rows, RATIO_RATE)
    mem, idle, burst = r.get("memory") or {}, r.get("idle") or {}, r.get("burst") or {}
    base = r.get("floor") or {}
    return {
        "ttft_added_p50_ms": at30["ttft_added_p50_ms"] if at30 else None,
        "ttft_added_p99_ms": at30["ttft_added_p99_ms"] if at30 else None,
        "cpu_ms_per_token_30": at30["cpu_ms_per_token_parts"] if at30 else None,
        "floor_ms_per_token_30": base.get("cpu_ms_per_token"),
        "wakeups_per_token_30": at30.get("wakeups_per_token") if at30 else None,
        "floor_wakeups_per_token_30": base.get("wakeups_per_token"),
        "ceiling_tps": burst.get("received_tps_median"),
        "ratio_1000": at1000["ratio"] if at1000 else None,
        "rss_mb": mem.get("rss_mb"),
        "pss_mb": mem.get("pss_mb"),
        "unique_mb": mem.get("unique_mb"),
        "processes": mem.get("count"),
        "idle_cpu_pct": idle.get("cpu_pct"),
        "idle_wakeups_per_s": idle["wakeups"] / idle["seconds"] if idle.get("seconds") else None,
        "intact": all(row.get("intact", True) for row in rows) and bool(burst.get("complete", True)),
        **_http_headline(r),
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
            "idle_s": opts.idle_s,
            "spaced_requests": opts.spaced_requests,
            "config": opts.config,
            "http": opts.http,
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
        settings = {**_config(opts.library, model_file, host, port, base), **opts.config}
        apis = (
            [HttpStreamClient("127.0.0.1", free_port(), api) for api in ("openai", "ollama")]
            if opts.http
            else []
        )
        if apis:
            settings["plugins"] = {
                "enabled": ["http", "ollama"],
                "http": {"host": "127.0.0.1", "port": apis[0].addr[1]},
                "ollama": {"host": "127.0.0.1", "port": apis[1].addr[1]},
            }
        cfg.write_text(to_toml(settings))
        daemon = DaemonProcess(cfg, work / "rkllmd.log", env=opts.daemon_env or None)
        client: BenchClient | None = None
        broker_pid = broker.proc.pid if broker is not None else None
        cpu = _Cpu(daemon.pid, broker_pid)
        try:
            client = BenchClient(host, port, base)
            client.wait_state("online", timeout=60)
            client.command("load", {"model": "fake"}, timeout=60)
            _generate(client, 0, 16)  # one answer before the figures: every code path imported
            for http in apis:
                http.wait_listening(30)
                http.chat(_prompt(0, 16), 16)
            result["memory"] = _memory(daemon.pid)
            if opts.idle_s > 0:
                result["idle"] = _idle(cpu, daemon.pid, opts.idle_s)
            result["rates"] = []
            for rate in opts.rates:
                result["rates"].append(_rate_row(client, cpu, rate, opts))
                for http in apis:  # the same rate over each HTTP API, right after
                    delay = result["rates"][-1]["delay_ms"]
                    result.setdefault(f"rates_{http.api}", []).append(
                        http_rate_row(http, cpu, rate, delay, opts.tokens, opts.per_rate)
                    )
                if rate == HEADLINE_RATE:  # the machine's floor for the same hops, right after
                    result["floor"] = floor.measure(host, port, broker_pid, rate, opts.per_rate * opts.tokens)
            result["burst"] = _burst(client, opts)
            result["soak"] = _soak(client, cpu, daemon.pid, opts)
            if opts.spaced_requests > 0:
                result["spaced"] = _spaced(client, cpu, opts)
            if broker is not None:
                result["broker_cpu_s"] = procfs.cpu_seconds(broker.proc.pid)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- rkllmd log tail ---\n{daemon.log_tail()}") from exc
        finally:
            if client is not None:
                client.close()
            for http in apis:
                http.close()
            daemon.stop()
            if broker is not None:
                broker.stop()
    result["headline"] = headline(result)
    return result
