"""The retained stats topic follows the queue and the running job live, over real mosquitto."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.e2e.conftest import Start
from tests.helpers import Probe


def test_stats_show_running_job_and_queue_while_first_job_runs(
    start_daemon: Start, mqtt_probe: Probe
) -> None:
    """While one slow job runs and another waits, stats say busy and queue depth 1, and never which
    request runs: every user may read them, and an id is what a cancel names."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/stats", f"{base}/stream/slow", f"{base}/response/generate")
    slow = {"id": "slow", "prompt": "[[delay_ms=100]] [[len=40]] a b"}  # about 4 s
    mqtt_probe.publish(f"{base}/request/generate", slow)
    mqtt_probe.get(f"{base}/stream/slow", timeout=10)  # it runs
    mqtt_probe.publish(f"{base}/request/generate", {"id": "next", "prompt": "[[len=3]] c d"})
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while True:
        msg = mqtt_probe.get(None, timeout=max(0.01, deadline - time.monotonic()))
        if msg.topic == f"{base}/response/generate":
            raise AssertionError(f"final reply {msg.json().get('id')} came first; stats so far: {seen}")
        if msg.topic != f"{base}/stats":
            continue
        stats = msg.json()
        seen.append(stats)
        assert "running" not in stats and "slow" not in json.dumps(stats), stats
        if stats["busy"] and stats["queue_depth"] == 1 and stats["requests"] == 1:
            break
    # and the last state is published too: both done, nothing queued
    last = seen[-1]
    deadline = time.monotonic() + 20
    while not (last["requests"] >= 2 and not last["busy"] and last["queue_depth"] == 0):
        last = mqtt_probe.get(f"{base}/stats", timeout=max(0.01, deadline - time.monotonic())).json()
    assert "running" not in last
