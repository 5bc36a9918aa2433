"""Faults against real mosquitto: a broker restart mid-generation and a kill -9 of rkllmd lose no
request the broker or rkllmd had accepted (C runtime double, rkllmd as a process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import rkllm_config
from tests.e2e.hardening_helpers import ClientProbe, persistence_conf
from tests.helpers import Broker, DaemonProc, Probe, start_broker, write_config


def replies_by_id(p: Probe, topic: str, ids: set[str], timeout: float = 40.0) -> dict[str, dict[str, Any]]:
    """The first reply on ``topic`` for each id in ``ids`` (TimeoutError names the ones missing)."""
    got: dict[str, dict[str, Any]] = {}
    while set(got) != ids:
        try:
            m = p.get(topic, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no reply for {sorted(ids - set(got))}; got {sorted(got)}") from None
        body = json.loads(m.payload)
        if body.get("id") in ids:
            got.setdefault(body["id"], body)
    return got


def next_online(p: Probe, base: str) -> bool:
    """Wait for the next {"state":"online"} on the state topic (skipping the Will's "offline");
    returns whether it was a live publish rather than a retained copy."""
    for _ in range(5):
        m = p.get(f"{base}/state", timeout=40)
        if m.json() == {"state": "online"}:
            return not m.retain
    raise AssertionError("rkllmd did not publish online again")


def request(p: Probe, base: str, rid: str, prompt: str, reply: str) -> None:
    p.publish(f"{base}/request/generate", {"id": rid, "prompt": prompt, "reply_to": reply}, qos=1)


@pytest.mark.parametrize("clean_start", [True, False], ids=["clean", "persistent"])
def test_broker_restart_mid_generation_answers_every_request(
    fake_libs: dict[str, Path], tmp_path: Path, clean_start: bool
) -> None:
    """The broker restarts mid-generation: rkllmd reconnects, re-publishes online, and the interrupted
    request, the ones queued inside rkllmd and the ones published after the restart are all answered."""
    persist = persistence_conf(tmp_path)
    b: Broker = start_broker(tmp_path, extra_conf=persist)
    base = "brc" if clean_start else "brp"
    cfg = rkllm_config(
        tmp_path,
        b,
        fake_libs["1.3"],
        base,
        mqtt={"clean_start": clean_start, "session_expiry_s": 300},
        limits={"queue_size": 8},
    )
    d = DaemonProc(cfg, tmp_path)
    # The probe's own session survives the restart (broker persistence), so nothing rkllmd
    # publishes after it comes back can slip past the probe before it reconnects.
    p = ClientProbe(b, client_id=f"{base}-probe", clean_start=False)
    try:
        d.wait_ready()
        p.subscribe(f"{base}-reply/#", f"{base}/state", f"{base}/stream/long")
        assert p.get(f"{base}/state").json() == {"state": "online"}
        request(p, base, "long", "[[delay_ms=40]] [[len=50]] go", f"{base}-reply/x")
        request(p, base, "queued1", "first in line", f"{base}-reply/x")
        request(p, base, "queued2", "second in line", f"{base}-reply/x")
        p.get(f"{base}/stream/long", timeout=10)  # the long one is running
        b.stop()
        b = start_broker(tmp_path, port=b.port, extra_conf=persist)
        assert p.connected.wait(30), "the probe did not reconnect"
        if clean_start:
            # A clean session has no subscription until rkllmd is back: wait for its re-published
            # state (a live message, not the retained copy), which it sends after re-subscribing.
            assert next_online(p, base)
        request(p, base, "after1", "after the restart", f"{base}-reply/x")
        request(p, base, "after2", "and one more", f"{base}-reply/x")
        got = replies_by_id(p, f"{base}-reply/x", {"long", "queued1", "queued2", "after1", "after2"})
        assert got["long"]["status"] in ("ok", "error")
        if got["long"]["status"] == "ok":
            assert got["long"]["data"]["usage"]["completion_tokens"] == 50
        for rid in ("queued1", "queued2", "after1", "after2"):
            assert got[rid]["status"] == "ok", got[rid]
        if not clean_start:
            assert next_online(p, base)
        log = d.log_text()
        assert "reconnects with backoff" in log and log.count('"connected to broker"') >= 2
    finally:
        p.close()
        assert d.stop() == 0
        b.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_kill_9_then_restart_answers_requests_held_by_the_broker(
    fake_libs: dict[str, Path], broker: Broker, tmp_path: Path, protocol: str
) -> None:
    """kill -9 with requests queued: the restarted rkllmd resumes its persistent session and answers
    every request the broker held for it while it was dead."""
    base = "k9v5" if protocol == "5" else "k9v3"
    cfg = rkllm_config(
        tmp_path,
        broker,
        fake_libs["1.3"],
        base,
        mqtt={"clean_start": False, "session_expiry_s": 300, "protocol": protocol},
        limits={"queue_size": 8},
    )
    d = DaemonProc(cfg, tmp_path)
    p = Probe(broker)
    d2: DaemonProc | None = None
    try:
        d.wait_ready()
        p.subscribe(f"{base}-reply/x", f"{base}/state", f"{base}/stream/long")
        assert p.get(f"{base}/state").json() == {"state": "online"}
        request(p, base, "long", "[[delay_ms=100]] [[len=200]] go", f"{base}-reply/x")
        request(p, base, "inside", "queued inside rkllmd", f"{base}-reply/x")
        p.get(f"{base}/stream/long", timeout=10)
        d.signal(signal.SIGKILL)
        assert d.proc.wait(timeout=10) == -signal.SIGKILL
        assert p.get(f"{base}/state", timeout=20).json() == {"state": "offline"}  # the broker saw it die
        held = {f"held{i}" for i in range(5)}
        for rid in sorted(held):
            request(p, base, rid, f"asked while rkllmd was dead {rid}", f"{base}-reply/x")
        d2 = DaemonProc(cfg, tmp_path)
        got = replies_by_id(p, f"{base}-reply/x", held)
        assert all(r["status"] == "ok" for r in got.values()), got
        assert '"session_present": true' in d2.log_text()
    finally:
        p.close()
        d.stop()
        if d2 is not None:
            assert d2.stop() == 0


def test_wrong_session_settings_are_config_errors(tmp_path: Path) -> None:
    """clean_start = false without a session expiry (MQTT 5) or without a client id is refused at startup."""
    for mqtt in ({"clean_start": False, "session_expiry_s": 0}, {"clean_start": False, "client_id": ""}):
        cfg = write_config(tmp_path / "bad.toml", {"mqtt": mqtt})
        out = subprocess.run(
            [sys.executable, "-m", "rkllmd", "check-config", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and "clean_start" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_long_outage_drops_stream_chunks_but_never_the_final_reply(
    fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """A whole 1,500-token generation runs while the broker is down: rkllmd holds its final reply and
    the stream's end marker, but skips chunks beyond its backlog bound, so memory stays bounded."""
    persist = persistence_conf(tmp_path) + "max_queued_messages 100000\n"
    b: Broker = start_broker(tmp_path, extra_conf=persist)
    cfg = rkllm_config(tmp_path, b, fake_libs["1.3"], "out", limits={"max_tokens_cap": 4000})
    d = DaemonProc(cfg, tmp_path)
    p = ClientProbe(b, client_id="out-probe", clean_start=False)
    try:
        d.wait_ready()
        p.subscribe("out-reply/x", "out/stream/long")
        p.publish(
            "out/request/generate",
            {
                "id": "long",
                "prompt": "[[delay_ms=2]] [[len=1500]] go",
                "max_tokens": 2000,
                "reply_to": "out-reply/x",
            },
        )
        p.get("out/stream/long", timeout=10)
        b.stop()
        d.wait_log("reconnects with backoff")
        # the whole generation runs during the outage
        d.wait_log('"request_id": "long", "kind": "generate", "finish_reason"', timeout=60)
        b = start_broker(tmp_path, port=b.port, extra_conf=persist)
        reply = json.loads(p.get("out-reply/x", timeout=60).payload)
        assert reply["status"] == "ok" and reply["data"]["usage"]["completion_tokens"] == 1500
        assert reply["data"]["text"].count("GO") == 1500
        chunks = p.collect_until("out/stream/long", lambda m: m.json().get("done"), timeout=30)
        assert chunks[-1].json()["finish_reason"] == "stop"
        assert len(chunks) < 1500  # chunks beyond the backlog bound were skipped, not queued
    finally:
        p.close()
        assert d.stop() == 0
        b.stop()
