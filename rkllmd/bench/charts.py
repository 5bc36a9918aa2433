"""PNG charts for the report: stream tok/s and TTFT per case, one bar per model and path.

matplotlib is the optional ``bench`` extra; without it the report says how to get the charts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHARTS = {
    "stream_tps": ("tokens/s as received (median, min-max)", "tps"),
    "ttft_ms": ("TTFT ms (median, min-max)", "ttft"),
}


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def draw(report: dict[str, Any], folder: Path, stem: str) -> list[str]:
    """Write one PNG per metric in CHARTS into ``folder``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a board or in CI
    import matplotlib.pyplot as plt

    cases = [c["id"] for c in report["cases"]]
    series = sorted({(e["model"], e["path"]) for e in report["runs"] if e.get("summary")})
    if not series:
        return []
    names = []
    for metric, (title, suffix) in CHARTS.items():
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases) * max(1, len(series)) ** 0.5), 3.6))
        width = 0.8 / len(series)
        for i, (model, path) in enumerate(series):
            med, lo, hi = [], [], []
            for case in cases:
                s = _summary(report, model, path, case).get(metric)
                med.append(s["median"] if s else 0.0)
                lo.append(s["median"] - s["min"] if s else 0.0)
                hi.append(s["max"] - s["median"] if s else 0.0)
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(cases))]
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=f"{model} · {path}")
        ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{title} — {report['machine'].get('host')}", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{stem}-{suffix}.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _summary(report: dict[str, Any], model: str, path: str, case: str) -> dict[str, Any]:
    for e in report["runs"]:
        if (e["model"], e["path"], e["case"]) == (model, path, case):
            return dict(e.get("summary") or {})
    return {}
