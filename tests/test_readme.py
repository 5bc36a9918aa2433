"""The README's examples match what the code prints."""

from __future__ import annotations

import io
import re

from rkllmd.client import _summary
from rkllmd.settings import EMBEDDED_MODEL_NAME, LimitSettings
from tests.helpers import REPO

SUMMARY = re.compile(
    r"^— (?P<tokens>\d+) tokens, finish=(?P<finish>\w+), TTFT (?P<ttft>\d+) ms, "
    r"(?P<tps>[\d.]+) tok/s, prefill (?P<prefill>\d+) tok/s, model (?P<model>\S+)$"
)


def test_ask_example_summary_is_what_ask_prints_with_the_defaults() -> None:
    """The `rkllmd ask` summary line in the README is `_summary`'s output, and its count fits its finish."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "rkllmd ask '" in line)
    line = next(x for x in lines[start:] if x.startswith("— "))
    m = SUMMARY.match(line)
    assert m, line
    reply = {
        "status": "ok",
        "data": {
            "model": m["model"],
            "finish_reason": m["finish"],
            "usage": {"completion_tokens": int(m["tokens"])},
            "timings": {
                "ttft_ms": float(m["ttft"]),
                "decode_tokens_per_s": float(m["tps"]),
                "prefill_tokens_per_s": float(m["prefill"]),
            },
        },
    }
    err = io.StringIO()
    assert _summary(reply, err) == 0
    assert err.getvalue().rstrip("\n") == line
    assert m["model"] == EMBEDDED_MODEL_NAME
    cap = LimitSettings().max_tokens  # no --max-tokens in the example, and the embedded model sets none
    assert m["finish"] in ("stop", "length")
    if m["finish"] == "length":
        assert int(m["tokens"]) == cap, f"finish=length needs {cap} tokens, the default cap"
    else:
        assert int(m["tokens"]) < cap
