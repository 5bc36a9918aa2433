"""Human-readable output of the relay benchmark (``rkllmd.bench.relay``)."""

from __future__ import annotations

import statistics
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
    for row in [*r.get("rates_openai", []), *r.get("rates_ollama", [])]:
        for api, what in (
            ("openai", "OpenAI API, /v1/chat/completions"),
            ("ollama", "Ollama API, /api/chat"),
        ):
            if r.get(f"rates_{api}") and row is r[f"rates_{api}"][0]:
                lines.append(f"the same over HTTP, {what} streamed (CPU: daemon + worker):")
        rate = row["rate"] if isinstance(row["rate"], str) else f"{row['rate']:g} tok/s"
        lines.append(
            f"{rate:>12} {_f(row['runtime_tps']):>14} {_f(row['received_tps']):>15} "
            f"{_f(row['ratio'], '.3f'):>6} "
            f"{_f(row['ttft_added_p50_ms']) + ' / ' + _f(row['ttft_added_p99_ms']):>22} "
            f"{_f(row['cpu_ms_per_token'], '.3f'):>13}"
        )
    fl = r.get("floor")
    if fl:
        fp = fl["cpu_ms_per_token_parts"]
        lines.append(
            f"the machine's floor at {fl['rate']:g} tok/s (the same hops doing nothing else, "
            f"rkllmd/bench/floor.py): {fl['cpu_ms_per_token']:.3f} ms/token (pacer {fp['pacer']:.3f} + "
            f"relay {fp['relay']:.3f} + broker {fp['broker']:.3f}); all arrived: {fl['all_arrived']}"
        )
        at30 = next((row for row in r.get("rates", []) if row["rate"] == fl["rate"]), None)
        if at30 and at30.get("wakeups_per_token_parts") and fl.get("wakeups_per_token_parts"):
            w, fw = at30["wakeups_per_token_parts"], fl["wakeups_per_token_parts"]
            lines.append(
                f"wake-ups per token at {fl['rate']:g} tok/s: rkllmd {at30['wakeups_per_token']:.2f} (daemon "
                f"{w['daemon']:.2f} + worker {w['worker']:.2f} + broker {w['broker']:.2f}), floor "
                f"{fl['wakeups_per_token']:.2f} (pacer {fw['pacer']:.2f} + relay {fw['relay']:.2f} + "
                f"broker {fw['broker']:.2f})"
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
    sp = r.get("spaced")
    if sp:
        c, w = sp["cpu_ms_per_request"], sp["wakeups_per_request"]
        lines.append(
            f"{sp['requests']} one-token requests {sp['spacing_s'] * 1e3:.0f} ms apart, per request: CPU "
            f"daemon {c['daemon']:.2f} + worker {c['worker']:.2f} + broker {c['broker']:.2f} ms; wake-ups "
            f"daemon {w['daemon']:.1f} + worker {w['worker']:.1f} + broker {w['broker']:.1f}"
        )
    if r.get("broker_cpu_s") is not None:
        lines.append(f"mosquitto CPU over the whole run: {r['broker_cpu_s']:.2f} s")
    mem = r.get("memory")
    if mem:
        lines += [
            "",
            f"memory with the model loaded: {mem['count']} processes, RSS {_f(mem['rss_mb'])} MB "
            f"(PSS {_f(mem['pss_mb'])} MB; distinct pages {_f(mem.get('unique_mb'))} MB)",
            *(
                f"  {p['pid']:>7} RSS {_f(p['rss_mb']):>6} MB  PSS {_f(p['pss_mb']):>6} MB  {p['what']}"
                for p in mem["processes"]
            ),
        ]
    idle = r.get("idle")
    if idle:
        lines.append(
            f"idle {idle['seconds']:g} s, model loaded: CPU {idle['cpu_s'] * 1e3:.0f} ms "
            f"({_f(idle['cpu_pct'], '.3f')} %), {idle['wakeups']} wake-ups in {len(idle['threads_woken'])} "
            f"of {idle['threads']} threads"
        )
    h = r.get("headline")
    if h:
        lines += ["", *headline_table([h])]
    return "\n".join(lines) + "\n"


def _cpu30(h: dict[str, Any]) -> str:
    c = h.get("cpu_ms_per_token_30")
    if not c or c.get("total") is None:
        return "-"
    floor, woke, floor_woke = (
        h.get("floor_ms_per_token_30"),
        h.get("wakeups_per_token_30"),
        h.get("floor_wakeups_per_token_30"),
    )
    return (
        f"{c['total']:.2f} (daemon {_f(c['daemon'], '.2f')} + worker {_f(c['worker'], '.2f')} "
        f"+ broker {_f(c['broker'], '.2f')})"
        + (f"; floor {floor:.2f}" if floor is not None else "")
        + (f"; {woke:.1f} wake-ups/token (floor {_f(floor_woke)})" if woke is not None else "")
    )


def headline_table(rounds: list[dict[str, Any]], label: str = "rkllmd over MQTT") -> list[str]:
    """The comparison table's row (docs/BENCHMARKING.md), medians over ``rounds`` headlines."""
    h = median_headline(rounds)
    return [
        "| system | TTFT added p50 / p99 | CPU ms/token @30 | ceiling tok/s | ratio @1000 tok/s "
        "| RSS, model loaded | idle CPU |",
        "|---|---|---|---|---|---|---|",
        f"| {label} | {_f(h['ttft_added_p50_ms'])} / {_f(h['ttft_added_p99_ms'])} ms | {_cpu30(h)} "
        f"| {_f(h['ceiling_tps'], '.0f')} | {_f(h['ratio_1000'], '.3f')} "
        f"| {_f(h['rss_mb'])} MB ({h['processes']} processes; PSS {_f(h['pss_mb'])} MB"
        + (f", distinct pages {h['unique_mb']:.1f} MB" if h.get("unique_mb") is not None else "")
        + ") "
        f"| {_f(h['idle_cpu_pct'], '.3f')} %, {_f(h['idle_wakeups_per_s'], '.1f')} wake-ups/s |",
        *_http_row(h, label, "openai", "OpenAI API"),
        *_http_row(h, label, "ollama", "Ollama API"),
    ]


def _http_row(h: dict[str, Any], label: str, api: str, what: str) -> list[str]:
    """The same daemon's HTTP path, measured in the same rounds (``--http``)."""
    c = h.get(f"{api}_cpu_ms_per_token_30")
    if not c:
        return []
    cpu = (
        f"{_f(c['total'], '.2f')} (daemon {_f(c['daemon'], '.2f')} + worker {_f(c['worker'], '.2f')} "
        f"+ broker {_f(c['broker'], '.2f')})"
    )
    return [
        f"| {label}, the same rounds over HTTP ({what}, streamed) "
        f"| {_f(h[f'{api}_ttft_added_p50_ms'])} ms (p50) "
        f"| {cpu} | | {_f(h[f'{api}_ratio_1000'], '.3f')} | (the row above: the same daemon) | |"
    ]


def median_headline(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each headline figure's median over the rounds (CPU parts each on their own)."""

    def med(values: list[Any]) -> Any:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    out: dict[str, Any] = {}
    for key in rounds[0]:
        if key.endswith("cpu_ms_per_token_30"):
            parts = [h[key] for h in rounds if h.get(key)]
            out[key] = {k: med([p[k] for p in parts]) for k in parts[0]} if parts else None
        elif key.endswith("intact"):
            out[key] = all(h[key] for h in rounds)
        else:
            out[key] = med([h[key] for h in rounds])
    return out
