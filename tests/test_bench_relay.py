"""The relay benchmark with the C double: a tiny run prints sane figures (no speed is asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rkllmd.bench import floor, procfs
from rkllmd.bench.relay import RelayOptions, run_relay
from rkllmd.bench.relayprint import relay_text
from tests.fake_rkllm.build import build_fake
from tests.helpers import Broker


def test_tiny_relay_run(broker: Broker, tmp_path: Path) -> None:
    """Throttled and unthrottled rates, a burst and a short soak give positive, plausible figures."""
    opts = RelayOptions(
        library=build_fake("1.3", tmp_path),
        rates=[100.0, 0.0],
        tokens=10,
        per_rate=2,
        burst_tokens=200,
        requests=20,
        spaced_requests=5,
        host=broker.host,
        port=broker.port,
    )
    r = run_relay(opts)
    throttled, unthrottled = r["rates"]
    assert throttled["delay_ms"] == 10 and unthrottled["rate"] == "unthrottled"
    for row in r["rates"]:
        assert row["requests"] == 2 and row["runtime_tps"] > 0
        assert row["ttft_added_p50_ms"] <= row["ttft_added_p99_ms"]
    # Tokens 10 ms apart arrive in several chunks: a rate. Unthrottled, a loaded machine may get
    # all ten in one chunk: no rate to tell (None), never zero or NaN.
    assert throttled["received_tps"] > 0 and throttled["ratio"] > 0
    fast = unthrottled["received_tps"]
    assert fast is None or (fast > 0 and unthrottled["ratio"] > 0)
    # No bound on received against made: a first chunk held up on a busy machine shortens the
    # span the received rate is measured over, so a ratio bound here would time the machine.
    # Tokens 10 ms apart: the worker sleeps between them (the double's own pace); the daemon
    # wakes for them, how often depends on how they were joined, so only that it was counted.
    woke = throttled["wakeups_per_token_parts"]
    assert woke["worker"] >= 0.9 and woke["daemon"] > 0 and woke["broker"] >= 0
    assert throttled["wakeups_per_token"] == pytest.approx(sum(woke.values()))
    assert r["burst"]["complete"] and r["burst"]["received_tps_max"] > 0
    soak = r["soak"]
    assert soak["requests"] == 20 and len(soak["rss_curve"]) >= 2 and soak["rss_end_mb"] > 0
    assert 0 < soak["ttft_p50_ms"] <= soak["ttft_p99_ms"] <= soak["ttft_max_ms"]
    spaced = r["spaced"]  # each request wakes the daemon at least to take it and to answer it
    assert spaced["requests"] == 5 and spaced["wakeups_per_request"]["daemon"] >= 2
    assert set(spaced["cpu_ms_per_request"]) == {"daemon", "worker", "broker"}  # ticks: too coarse to bound
    text = relay_text(r)
    assert "one-token requests" in text
    assert "unthrottled" in text and "TTFT added" in text and "RSS" in text


def test_the_floor_relays_every_token_through_the_broker_and_counts_each_process(broker: Broker) -> None:
    """The yardstick's pacer, relay and broker hops deliver every token; CPU is counted per process."""
    f = floor.measure(broker.host, broker.port, broker.proc.pid, rate=200.0, tokens=40)
    assert f["all_arrived"] and f["tokens"] == 40
    parts = f["cpu_ms_per_token_parts"]
    # CPU comes in clock ticks (10 ms): one process's share of 40 tokens can round to zero.
    assert min(parts.values()) >= 0 and sum(parts.values()) > 0
    assert abs(f["cpu_ms_per_token"] - sum(parts.values())) < 1e-9
    # The pacer sleeps before each token; the relay waits for them, but on a loaded machine it
    # may find several waiting at one wake-up.
    woke = f["wakeups_per_token_parts"]
    assert woke["pacer"] >= 1 and woke["relay"] > 0 and woke["broker"] > 0
    assert f["wakeups_per_token"] == pytest.approx(sum(woke.values()))


def test_distinct_pages_count_a_shared_page_once() -> None:
    """A process listed twice occupies what it occupies once, and no more than its RSS."""
    me = os.getpid()
    alone = procfs.unique_mb([me])
    if alone is None:
        pytest.skip("page frame numbers are root's to read")
    assert procfs.unique_mb([me, me]) == pytest.approx(alone, abs=5)  # not twice
    assert alone <= (procfs.rss_mb(me) or 0) + 5


def test_relay_run_over_http_measures_both_apis(broker: Broker, tmp_path: Path) -> None:
    """With http, each rate is measured again over the OpenAI and the Ollama API of the same daemon:
    every token arrives on both, and only Ollama's stream (which carries the decode time) gives the
    double's rate and the ratio."""
    opts = RelayOptions(
        library=build_fake("1.3", tmp_path),
        rates=[100.0],
        tokens=10,
        per_rate=2,
        burst_tokens=50,
        requests=5,
        idle_s=0,
        spaced_requests=0,
        host=broker.host,
        port=broker.port,
        http=True,
    )
    r = run_relay(opts)
    (openai_row,), (ollama_row,) = r["rates_openai"], r["rates_ollama"]
    for row in (openai_row, ollama_row):
        assert row["requests"] == 2 and row["intact"] and row["received_tps"] > 0
        assert row["ttft_added_p50_ms"] <= row["ttft_added_p99_ms"]
        assert row["cpu_ms_per_token_parts"]["total"] is not None
    assert openai_row["ratio"] is None and openai_row["runtime_tps"] is None
    assert ollama_row["runtime_tps"] > 0 and ollama_row["ratio"] > 0
    h = r["headline"]
    assert h["openai_intact"] and h["ollama_intact"] and h["ollama_cpu_ms_per_token_30"] is None  # no 30 row
    text = relay_text(r)
    assert "OpenAI API, /v1/chat/completions streamed" in text and "Ollama API, /api/chat streamed" in text
