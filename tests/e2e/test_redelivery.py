"""A single board killed with -9: what it had taken from the broker is still answered after a restart."""

from __future__ import annotations

import json
import os
import signal
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Probe, probe, write_config


def _daemon(
    tmp: Path, broker: Broker, lib: Path, base: str, *, clean: bool, journal: bool, queue_size: int = 4
) -> DaemonProc:
    mqtt = {"clean_start": clean, "redelivery_wait_s": 1.0}
    # Room for all three while the startup load may still count as running: no busy before the kill.
    cfg = rkllm_config(tmp, broker, lib, base, mqtt=mqtt, limits={"queue_size": queue_size})
    if journal:
        write_config(cfg, {"state_dir": str(tmp / "state"), **tomllib.loads(cfg.read_text())})
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    return d


def _ask(p: Probe, base: str, rid: str) -> None:
    prompt = f"[[delay_ms=80]] [[len=25]] redelivery {rid}"
    p.publish(
        f"{base}/request/generate",
        {"id": rid, "prompt": prompt, "stream": False},
        response_topic=f"{base}-t/r",
    )


def _replies(p: Probe, base: str, seconds: float, want: int | None = None) -> list[dict[str, object]]:
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and (want is None or len(out) < want):
        try:
            out.append(json.loads(p.get(f"{base}-t/r", timeout=left).payload))
        except TimeoutError:
            break
    return out


def test_a_kept_session_gets_the_killed_requests_again(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """With mqtt.clean_start = false, requests taken but unanswered at a kill -9 run after the restart."""
    base = f"rd{uuid.uuid4().hex[:6]}"
    d = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=False)
    with probe(broker) as p:
        p.subscribe(f"{base}-t/r")
        for rid in ("a", "b", "c"):  # one runs, two wait in the queue
            _ask(p, base, rid)
        for rid in ("a", "b", "c"):  # taken from the broker (unacknowledged until answered)
            d.wait_event("request queued", request_id=rid)
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        d2 = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=False)
        try:
            got = _replies(p, base, 12.0)
        finally:
            d2.stop()
    assert Counter(str(r["id"]) for r in got) == Counter(["a", "b", "c"]), got
    assert all(r["status"] == "ok" for r in got), got


def test_the_backlog_a_kept_session_gets_at_once_waits_its_turn(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """What the broker held while the board was dead arrives in one burst on the reconnect (mosquitto
    ignores Receive Maximum there): every request waits its turn, far past queue_size, none is busy."""
    base = f"rb{uuid.uuid4().hex[:6]}"
    d = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=False, queue_size=2)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    ids = [f"bl{i}" for i in range(20)]
    with probe(broker) as p:
        p.subscribe(f"{base}-t/r")
        for rid in ids:  # published while no board runs: the broker queues them in the kept session
            p.publish(
                f"{base}/request/generate",
                {"id": rid, "prompt": f"[[delay_ms=5]] [[len=3]] {rid}", "stream": False},
                response_topic=f"{base}-t/r",
            )
        time.sleep(0.3)
        d2 = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=False, journal=False, queue_size=2)
        try:
            got = _replies(p, base, 15.0, want=len(ids))
            got += _replies(p, base, 0.5)
        finally:
            d2.stop()
    assert Counter(str(r["id"]) for r in got) == Counter(ids), got
    assert [r for r in got if r["status"] != "ok"] == []


def test_a_clean_session_with_a_journal_answers_interrupted(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """With a clean session the broker forgets them; the journal lets the restarted daemon say so."""
    base = f"rj{uuid.uuid4().hex[:6]}"
    d = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=True, journal=True)
    with probe(broker) as p:
        p.subscribe(f"{base}-t/r")
        for rid in ("a", "b"):
            _ask(p, base, rid)
        # Journaled before queued: killed any sooner, a request the daemon had not taken yet is
        # simply lost with the clean session, and nobody could answer it.
        for rid in ("a", "b"):
            d.wait_event("request queued", request_id=rid)
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        d2 = _daemon(tmp_path, broker, fake_libs["1.3"], base, clean=True, journal=True)
        try:
            got = _replies(p, base, 5.0)
        finally:
            d2.stop()
        assert "answering a request the previous run never answered" in d2.log_text()
    assert sorted(str(r["id"]) for r in got) == ["a", "b"], got
    assert {r["code"] for r in got} == {"interrupted"}, got
