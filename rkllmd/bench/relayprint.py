"""Human-readable output of the relay benchmark (``rkllmd.bench.relay``)."""

from __future__ import annotations

from typing import Any


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def relay_text(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"rkllmd relay benchmark on {m['host']}: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB, "
        f"kernel {m['kernel']}",
        "runtime: the RKLLM C double (tests/fake_rkllm), token rate fixed by [[delay_ms=N]]",
        "",
        f"{'rate':>12} {'runtime tok/s':>14} {'received tok/s':>15} {'ratio':>6} "
        f"{'TTFT added p50/p99 ms':>22} {'CPU ms/token':>13}",
    ]
    for row in r.get("rates", []):
        rate = row["rate"] if isinstance(row["rate"], str) else f"{row['rate']:g} tok/s"
        lines.append(
            f"{rate:>12} {_f(row['runtime_tps']):>14} {_f(row['received_tps']):>15} "
            f"{_f(row['ratio'], '.3f'):>6} "
            f"{_f(row['ttft_added_p50_ms']) + ' / ' + _f(row['ttft_added_p99_ms']):>22} "
            f"{_f(row['cpu_ms_per_token'], '.3f'):>13}"
        )
    b = r.get("burst")
    if b:
        lines += [
            "",
            f"one subscriber, {b['tokens']}-token unthrottled answers: received up to "
            f"{_f(b['received_tps_max'], '.0f')} tok/s (median {_f(b['received_tps_median'], '.0f')}; "
            f"the double produced {_f(b['runtime_tps_median'], '.0f')} tok/s); all tokens arrived: "
            f"{b['complete']}",
        ]
    s = r.get("soak")
    if s:
        lines += [
            f"{s['requests']} short requests (16 tokens) one after another, after {s['warmup_requests']} "
            f"warm-up: {_f(s['requests_per_s'])} req/s, TTFT p50 {_f(s['ttft_p50_ms'], '.2f')} ms, "
            f"p99 {_f(s['ttft_p99_ms'], '.2f')} ms, max {_f(s['ttft_max_ms'], '.1f')} ms",
            f"  daemon CPU {_f(s['cpu_ms_per_token'], '.3f')} ms/token, "
            f"{_f(s['cpu_ms_per_request'], '.2f')} ms/request; RSS (rkllmd + worker) "
            f"{_f(s['rss_start_mb'])} -> {_f(s['rss_end_mb'])} MB ({s['rss_growth_mb']:+.1f} MB)",
            "  RSS curve (requests: MB): " + ", ".join(f"{n}: {mb:.1f}" for n, mb in s["rss_curve"]),
        ]
    if r.get("broker_cpu_s") is not None:
        lines.append(f"mosquitto CPU over the whole run: {r['broker_cpu_s']:.2f} s")
    return "\n".join(lines) + "\n"
