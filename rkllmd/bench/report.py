"""The report files: ``<date>-<host>.json`` (everything) and ``.md`` (tables, charts, responses)."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path
from typing import Any

from rkllmd.bench import charts

# (metric, column title, decimals) of the per-model table
COLUMNS = [
    ("ttft_ms", "TTFT ms", 1),
    ("ttfs_ms", "first sentence ms", 1),
    ("prefill_tps", "prefill tok/s", 1),
    ("decode_tps", "decode tok/s", 1),
    ("stream_tps", "received tok/s", 1),
    ("total_ms", "total ms", 0),
    ("prompt_tokens", "prompt tok", 0),
    ("completion_tokens", "completion tok", 0),
    ("runtime_memory_mb", "runtime MB", 0),
    ("image_encode_ms", "image encode ms", 1),
]


def report_stem(report: dict[str, Any], folder: Path) -> str:
    """``<date>-<host>``, with ``-2``, ``-3``… when that name is taken in ``folder``."""
    date = str(report["started"])[:10] or dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", str(report["machine"].get("host") or "host"))
    stem, n = f"{date}-{host}", 1
    while (folder / f"{stem}.json").exists() or (folder / f"{stem}.md").exists():
        n += 1
        stem = f"{date}-{host}-{n}"
    return stem


def write_report(report: dict[str, Any], folder: Path, with_charts: bool = True) -> tuple[Path, Path]:
    """Write the charts, the JSON and the markdown into ``folder``; returns (md, json) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = report_stem(report, folder)
    report["charts"] = []
    if with_charts and charts.available():
        report["charts"] = charts.draw(report, folder, stem)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report, with_charts), encoding="utf-8")
    return md_path, json_path


def cell(summary: dict[str, Any] | None, decimals: int) -> str:
    """``median`` alone for one run, else ``median (min-max)``; a dash when unknown."""
    if not summary:
        return "-"
    fmt = f"{{:.{decimals}f}}"
    med = fmt.format(summary["median"])
    if summary["n"] < 2 or summary["min"] == summary["max"]:
        return med
    return f"{med} ({fmt.format(summary['min'])}-{fmt.format(summary['max'])})"


def response_html(text: str) -> str:
    """A response as it appears in a table cell: HTML-escaped, line breaks kept as <br>."""
    return html.escape(text).replace("\n", "<br>")


def fence(text: str) -> str:
    """``text`` in a fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def markdown(report: dict[str, Any], with_charts: bool = True) -> str:
    m, opts = report["machine"], report["options"]
    out = [f"# rkllmd benchmark — {m.get('host')}, {report['started']}", ""]
    if report.get("interrupted"):
        out += ["> **Interrupted (Ctrl-C):** only what was measured before it is reported.", ""]
    out += [
        f"- **Machine:** {m.get('cpu')} ({m.get('arch')}), {m.get('cores')} cores "
        f"({m.get('usable_cores')} usable), {m.get('ram_gb')} GB RAM, kernel {m.get('kernel')}, "
        f"{m.get('os')}" + (f", board {m['board']}" if m.get("board") else ", no NPU board detected"),
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- **Runs:** {opts['runs']} measured after {opts['warmup']} warm-up per case and path; "
        f"temperature {opts['temperature']}, seed {opts['seed']}, max_tokens "
        f"{opts['max_tokens'] or 'per case'}; broker: {opts['broker']}",
        "- **Paths:** *direct* = rkllmd's Runtime class called in the benchmark process; *mqtt* = a "
        f"real `rkllmd run` process (isolation {opts.get('daemon_isolation')}), timed by an MQTT "
        "client from publish to first stream chunk. "
        "Every run starts from an empty KV cache, except the turns of an HA turn case (cold: a "
        "system prompt never seen; warm: the next turn; reload: that turn after reloading the model).",
        "- Cells are `median (min-max)` over the measured runs. TTFT, total and received tok/s are "
        "seen by the caller; prefill and decode tok/s come from the runtime's own counters.",
        "",
    ]
    for e in report.get("errors", []):
        out.append(f"- **Error:** {e}")
    for s in report.get("skipped", []):
        out.append(f"- Skipped: {s}")
    for model, meta in report["models"].items():
        out += _model_section(report, model, meta)
    if with_charts:
        out += ["## Charts", ""]
        if report.get("charts"):
            out += [f"![{name}]({name})" for name in report["charts"]] + [""]
        else:
            out += ["(no charts: install matplotlib, `pip install 'rkllmd[bench]'`)", ""]
    out += _responses(report)
    return "\n".join(out) + "\n"


def _model_section(report: dict[str, Any], model: str, meta: dict[str, Any]) -> list[str]:
    info = meta.get("info") or {}
    runtime = " ".join(str(x) for x in (info.get("runtime", meta["runtime"]), info.get("version", "")) if x)
    out = [f"## Model `{model}` — {runtime}", "", f"{meta.get('description') or ''} `{meta['path']}`", ""]
    out.append("| case | path | " + " | ".join(t for _, t, _ in COLUMNS) + " |")
    out.append("|---|---|" + "---:|" * len(COLUMNS))
    order = {c["id"]: i for i, c in enumerate(report["cases"])}
    entries = [e for e in report["runs"] if e["model"] == model and e.get("summary")]
    for e in sorted(entries, key=lambda e: (order.get(e["case"], 0), e["path"])):
        cells = [cell(e["summary"].get(k), d) for k, _, d in COLUMNS]
        out.append(f"| {e['case']} | {e['path']} | " + " | ".join(cells) + " |")
    out.append("")
    for mem in report["memory"]:
        if mem["model"] == model and mem.get("peak_rss_mb") is not None:
            who = "benchmark process" if mem["path"] == "direct" else "rkllmd and its worker processes"
            out.append(
                f"- Peak RSS ({mem['path']}, {who}, VmHWM): {mem['peak_rss_mb']:.0f} MB; "
                f"RSS at the end {mem.get('rss_mb') or 0:.0f} MB"
            )
    out += _ha_turn_lines(entries)
    rows = [o for o in report.get("overhead", []) if o["model"] == model]
    if rows:
        out += ["", "What the daemon adds (mqtt against direct, medians):", ""]
        out += ["| case | received tok/s mqtt ÷ direct | decode tok/s mqtt ÷ direct | TTFT added ms |"]
        out += ["|---|---:|---:|---:|"]
        for o in rows:
            out.append(
                f"| {o['case']} | {_num(o['stream_tps_ratio'], 3)} | {_num(o['decode_tps_ratio'], 3)} "
                f"| {_num(o['ttft_added_ms'], 1)} |"
            )
    return [*out, ""]


def _ha_turn_lines(entries: list[dict[str, Any]]) -> list[str]:
    """warm and reload TTFT as a share of cold, per HA turn case and path (medians)."""
    med = {(e["case"], e["path"]): (e["summary"].get("ttft_ms") or {}).get("median") for e in entries}
    out = []
    for (case, path), cold in sorted(med.items()):
        if not case.endswith(":cold") or not cold:
            continue
        base = case.removesuffix(":cold")
        parts = []
        for phase in ("warm", "reload"):
            v = med.get((f"{base}:{phase}", path))
            if v is not None:
                parts.append(f"{phase} {v:.0f} ms = {100 * v / cold:.1f} %")
        if parts:
            head = f"- HA turn `{base}` ({path}): TTFT cold {cold:.0f} ms; "
            out.append(head + ", ".join(parts) + " of cold")
    return ["", *out] if out else []


def _num(v: float | None, decimals: int) -> str:
    return "-" if v is None else f"{v:.{decimals}f}"


def first_texts(report: dict[str, Any], case: str) -> list[tuple[str, str]]:
    """(column title, response) per model for ``case``: one column when both paths agree."""
    cols: list[tuple[str, str]] = []
    for model in report["models"]:
        texts = {
            e["path"]: e["samples"][0]["text"]
            for e in report["runs"]
            if e["model"] == model and e["case"] == case and e["samples"]
        }
        if len(set(texts.values())) == 1:
            cols.append((f"{model} ({' = '.join(texts)})", next(iter(texts.values()))))
        else:
            cols.extend((f"{model} ({path})", text) for path, text in texts.items())
    return cols


def _responses(report: dict[str, Any]) -> list[str]:
    out = ["## Prompts and responses", "", "The first measured run of each; the JSON holds every run.", ""]
    for case in report["cases"]:
        out += [f"### `{case['id']}` ({case['category']})", ""]
        if case.get("note"):
            out += [f"*{case['note']}*", ""]
        if case.get("system"):
            out += ["System:", "", fence(case["system"]), ""]
        out += ["Prompt:", "", fence(case["prompt"]), ""]
        if case.get("images"):
            from rkllmd.bench.images import describe

            out += ["Images: " + "; ".join(describe(n) for n in case["images"]), ""]
        cols = first_texts(report, case["id"])
        if not cols:
            out += ["(not measured)", ""]
            continue
        out.append("<table><tr>" + "".join(f"<th>{html.escape(t)}</th>" for t, _ in cols) + "</tr>")
        out.append(
            "<tr>" + "".join(f'<td valign="top">{response_html(x)}</td>' for _, x in cols) + "</tr></table>"
        )
        out.append("")
    return out
