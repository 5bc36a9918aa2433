"""`rkllmd bench --compare`: regressions beyond the threshold are flagged, identical reports pass."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

from rkllmd.bench.compare import compare_files, diff
from rkllmd.bench.runner import finish_report
from rkllmd.bench.stats import Sample
from rkllmd.cli import main


def report(decode_tps: float = 100.0, ttft_ms: float = 50.0) -> dict[str, Any]:
    samples = [
        Sample(ttft_ms=ttft_ms + i, total_ms=500.0, completion_tokens=40, decode_tps=decode_tps - i).to_json()
        for i in range(3)
    ]
    r: dict[str, Any] = {
        "format": "rkllmd-bench/1",
        "runs": [{"model": "m", "path": "mqtt", "case": "c", "samples": samples}],
        "memory": [{"model": "m", "path": "mqtt", "peak_rss_mb": 300.0}],
    }
    finish_report(r)
    return r


def write(path: Path, r: dict[str, Any]) -> Path:
    path.write_text(json.dumps(r))
    return path


def test_identical_reports_have_no_regression(tmp_path: Path) -> None:
    """The same report against itself exits 0 and reports zero regressions."""
    a = write(tmp_path / "a.json", report())
    b = write(tmp_path / "b.json", copy.deepcopy(report()))
    out = io.StringIO()
    assert compare_files(a, b, 10.0, out) == 0
    assert "0 regression(s)" in out.getvalue()


def test_injected_regression_is_flagged(tmp_path: Path) -> None:
    """Decode 20% slower and TTFT 30% longer are both flagged; exit code 1 through the CLI."""
    a = write(tmp_path / "a.json", report())
    b = write(tmp_path / "b.json", report(decode_tps=80.0, ttft_ms=65.0))
    diffs = diff(json.loads(a.read_text()), json.loads(b.read_text()), 10.0)
    flagged = {d.metric for d in diffs if d.regression}
    assert flagged == {"decode_tps", "ttft_ms"}
    assert main(["bench", "--compare", str(a), str(b), "--threshold", "10"]) == 1


def test_improvement_and_small_change_are_not_regressions(tmp_path: Path) -> None:
    """Faster decoding, or a change inside the threshold, is not flagged."""
    base = report()
    better = report(decode_tps=130.0, ttft_ms=40.0)
    slightly = report(decode_tps=95.0, ttft_ms=52.0)
    assert not any(d.regression for d in diff(base, better, 10.0))
    assert not any(d.regression for d in diff(base, slightly, 10.0))
