"""One measured run (a Sample), and the median and spread of a metric over runs."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

#: Metrics summarised per (model, path, case); True where higher is better.
METRICS: dict[str, bool] = {
    "ttft_ms": False,
    "ttfs_ms": False,
    "prefill_tps": True,
    "decode_tps": True,
    "stream_tps": True,
    "total_ms": False,
    "prompt_tokens": True,
    "completion_tokens": True,
    "runtime_memory_mb": False,
    "image_encode_ms": False,
}


@dataclass
class Sample:
    """One run of one case. Times in ms; None where the path or runtime does not know it.

    ttft_ms and total_ms are seen by the caller (the benchmark: function call, or MQTT publish,
    to the first delta / the end); prefill_ms and decode_ms are the runtime's own counters;
    stream_tps is (deltas - 1) / (last delta - first delta) as the caller received them.
    """

    ttft_ms: float
    total_ms: float
    completion_tokens: int
    prompt_tokens: int | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    stream_tps: float | None = None
    deltas: int = 0
    daemon_ttft_ms: float | None = None
    runtime_memory_mb: float | None = None
    ttfs_ms: float | None = None  # to the first whole sentence (rkllmd.sentences), the caller's clock
    finish_reason: str = ""
    image_decode_ms: float | None = None  # a case with images: decoding and preprocessing them
    image_encode_ms: float | None = None  # and the vision encoder, both before the prefill
    text: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rate(count: float | None, ms: float | None) -> float | None:
    """count per second over ms milliseconds, or None when either is missing or zero."""
    if not count or not ms or ms <= 0:
        return None
    return count * 1000.0 / ms


def stream_rate(times: list[float]) -> float | None:
    """Deltas per second after the first, from arrival times in seconds."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def summarise(values: list[float | None]) -> dict[str, float | int] | None:
    """median, min, max, stdev (0 for one value) and n over the known values; None if none."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def summarise_samples(samples: list[Sample]) -> dict[str, dict[str, float | int]]:
    """The summary of every metric in METRICS that the samples report."""
    out: dict[str, dict[str, float | int]] = {}
    for name in METRICS:
        s = summarise([getattr(x, name) for x in samples])
        if s is not None:
            out[name] = s
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    vals = sorted(values)
    k = (len(vals) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)
