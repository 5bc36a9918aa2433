"""``rkllmd bench --compare A.json B.json``: medians of B against A, regressions flagged.

A regression is a metric that got worse by more than the threshold (percent): lower tok/s, or
higher TTFT, total time or memory. Token counts are shown, never flagged: they describe the
output, and a change there (another answer) explains a change in total time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rkllmd.bench.stats import METRICS

_FLAGGED = ("ttft_ms", "prefill_tps", "decode_tps", "stream_tps", "total_ms", "runtime_memory_mb")


@dataclass
class Diff:
    key: str
    metric: str
    a: float
    b: float
    regression: bool

    @property
    def change_pct(self) -> float:
        return (self.b - self.a) / self.a * 100 if self.a else 0.0


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("rkllmd-bench/"):
        raise ValueError(f"{path} is not an rkllmd bench report")
    return data


def _medians(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for e in report.get("runs", []):
        key = f"{e['model']} {e['path']} {e['case']}"
        for metric, s in (e.get("summary") or {}).items():
            out[(key, metric)] = float(s["median"])
    for mem in report.get("memory", []):
        if mem.get("peak_rss_mb") is not None:
            out[(f"{mem['model']} {mem['path']}", "peak_rss_mb")] = float(mem["peak_rss_mb"])
    return out


def diff(a: dict[str, Any], b: dict[str, Any], threshold: float) -> list[Diff]:
    """Every metric both reports have, in A's order, with regressions beyond ``threshold`` %."""
    ma, mb = _medians(a), _medians(b)
    out = []
    for (key, metric), va in ma.items():
        vb = mb.get((key, metric))
        if vb is None:
            continue
        higher_better = METRICS.get(metric, False)
        worse = (vb - va) / va * 100 if va else 0.0
        if higher_better:
            worse = -worse
        flagged = metric in _FLAGGED or metric == "peak_rss_mb"
        out.append(Diff(key, metric, va, vb, flagged and worse > threshold))
    return out


def print_diff(diffs: list[Diff], a: str, b: str, threshold: float, out: TextIO) -> int:
    """Print the table; returns the number of regressions."""
    print(f"A = {a}\nB = {b}\nregression threshold: {threshold:g} %\n", file=out)
    width = max((len(d.key) for d in diffs), default=10)
    print(f"{'what':<{width}}  {'metric':<18} {'A':>10} {'B':>10} {'change':>8}", file=out)
    for d in diffs:
        mark = "  REGRESSION" if d.regression else ""
        print(
            f"{d.key:<{width}}  {d.metric:<18} {d.a:>10.1f} {d.b:>10.1f} {d.change_pct:>+7.1f}%{mark}",
            file=out,
        )
    bad = sum(d.regression for d in diffs)
    if not diffs:
        print("nothing in common to compare (different models, paths or cases)", file=out)
    print(f"\n{bad} regression(s) beyond {threshold:g} %", file=out)
    return bad


def compare_files(a: Path, b: Path, threshold: float, out: TextIO) -> int:
    """Exit code: 1 when B regressed against A beyond the threshold, else 0."""
    diffs = diff(load(a), load(b), threshold)
    return 1 if print_diff(diffs, str(a), str(b), threshold, out) else 0
