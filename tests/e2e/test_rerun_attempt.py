"""A request run again after a kill -9 streams from seq 0 a second time: its chunks say which
attempt they belong to, so a reader drops what the first attempt streamed (docs/PROTOCOL.md)."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_redelivery import _daemon
from tests.helpers import Broker, probe


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_a_rerun_request_streams_with_attempt_2(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path, journal: bool
) -> None:
    """Killed mid-stream with the session kept, the restarted rkllmd runs the request the broker
    sends again: its chunks restart at seq 0 with "attempt": 2 (the first attempt's carry none), and
    its end message says attempt 2 too; the final reply is whole."""
    base = f"at{uuid.uuid4().hex[:6]}"
    d = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=journal)
    with probe(broker) as p:
        p.subscribe(f"{base}/stream/a", f"{base}-t/r")
        p.publish(
            f"{base}/request/generate",
            {"id": "a", "prompt": "[[delay_ms=80]] [[len=25]] attempt test"},
            response_topic=f"{base}-t/r",
        )
        first = [p.get(f"{base}/stream/a", timeout=20).json() for _ in range(3)]
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        d2 = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=journal)
        try:
            again = [
                m.json() for m in p.collect_until(f"{base}/stream/a", lambda m: m.json().get("done"), 30)
            ]
            final = p.get(f"{base}-t/r", timeout=20).json()
        finally:
            d2.stop()
    assert [c["seq"] for c in first] == [0, 1, 2] and all("attempt" not in c for c in first), first
    rerun = [c for c in again if c.get("attempt") == 2]
    assert rerun, again  # the re-run says it is one
    chunks, end = rerun[:-1], rerun[-1]
    assert [c["seq"] for c in chunks] == list(range(len(chunks))) and chunks, again
    assert end["done"] and end["seq"] == len(chunks) and end["status"] == "ok", end
    assert final["status"] == "ok" and final["data"]["text"] == "".join(c["delta"] for c in chunks)
