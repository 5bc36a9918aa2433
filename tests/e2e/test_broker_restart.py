"""A restart of the broker (real mosquitto, stopped with SIGTERM as systemd does): what rkllmd had
answered is not run again, a broker without persistence hears rkllmd again at once, and the shipped
broker configuration keeps the requests waiting for rkllmd."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import rkllm_config
from tests.e2e.hardening_helpers import ClientProbe, mosquitto_passwd, persistence_conf, shipped_broker_conf
from tests.helpers import REPO, Broker, DaemonProc, Probe, free_port, launch_broker, start_broker


def _events(d: DaemonProc, event: str) -> list[str]:
    """The request ids of the daemon's log lines with this event, in order."""
    out = []
    for line in d.log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and str(rec.get("event", "")).startswith(event):
            out.append(str(rec.get("request_id")))
    return out


def _done_after(d: DaemonProc, event: str) -> set[str]:
    """The ids of the requests the daemon logged done after its first log line with ``event``."""
    out: set[str] = set()
    seen = False
    for line in d.log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        seen = seen or str(rec.get("event", "")).startswith(event)
        if seen and rec.get("event") == "request done":
            out.add(str(rec.get("request_id")))
    return out


def _wait_done(d: DaemonProc, rid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while rid not in _events(d, "request done"):
        assert time.monotonic() < deadline, f"{rid} did not finish:\n{d.log_text()[-3000:]}"
        time.sleep(0.05)


def test_requests_answered_while_the_broker_was_away_do_not_run_again(
    fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """Broker persistence on, rkllmd's session kept: requests rkllmd answered while the broker was
    down (their replies held in the MQTT library) come back from the broker (DUP) after its restart;
    each runs once, every reply arrives, and every request is acknowledged (a restarted rkllmd gets
    none of them again)."""
    base = f"bx{uuid.uuid4().hex[:6]}"
    persist = persistence_conf(tmp_path)
    b: Broker = start_broker(tmp_path, extra_conf=persist)
    cfg = rkllm_config(
        tmp_path,
        b,
        fake_libs["1.3"],
        base,
        mqtt={"clean_start": False, "session_expiry_s": 300},
        limits={"queue_size": 8},
    )
    d = DaemonProc(cfg, tmp_path)
    d2: DaemonProc | None = None
    # The probe's session survives the restart too, so no reply can pass while it reconnects.
    p = ClientProbe(b, client_id=f"{base}-probe", clean_start=False)
    ids = ["r0", "r1", "r2", "r3"]
    try:
        d.wait_log('"rkllmd ready"')
        p.subscribe(f"{base}-reply/x")
        for rid in ids:
            # a second each: r1..r3 leave the broker's stop three seconds to come while they wait
            body = {"id": rid, "prompt": f"[[delay_ms=100]] [[len=10]] {rid}", "reply_to": f"{base}-reply/x"}
            p.publish(f"{base}/request/generate", body)
        _wait_done(d, "r0")
        b.stop()  # r1..r3 are queued or running: their replies wait in rkllmd for the broker
        _wait_done(d, "r3")
        b = start_broker(tmp_path, port=b.port, extra_conf=persist)
        got: Counter[str] = Counter()
        deadline = time.monotonic() + 30
        while set(got) != set(ids) and time.monotonic() < deadline:
            try:
                reply = json.loads(p.get(f"{base}-reply/x", timeout=1).payload)
            except TimeoutError:
                continue
            assert reply["status"] == "ok", reply
            got[reply["id"]] += 1
        assert set(got) == set(ids), got
        # The broker sent again, right after the CONNACK and before it had the held replies, every
        # request rkllmd answered while it was away (never acknowledged). Each redelivery is either
        # ignored as a duplicate or, wrongly, queued again: wait until every one was dealt with.
        held = _done_after(d, "disconnected from broker")
        assert held, "no request was answered while the broker was away: nothing was tested"

        def dealt_with() -> set[str]:
            again = {r for r, n in Counter(_events(d, "request queued")).items() if n > 1}
            return again | set(_events(d, "duplicate request ignored"))

        deadline = time.monotonic() + 30
        while not held <= dealt_with():
            assert time.monotonic() < deadline, f"redeliveries seen: {dealt_with()}\n{d.log_text()[-3000:]}"
            time.sleep(0.05)
        runs = Counter(_events(d, "request queued"))
        assert runs == Counter(ids), f"times queued per request: {dict(runs)}"
        assert d.stop() == 0
        # Acknowledged: the broker holds none of them for the session any more.
        d2 = DaemonProc(cfg, tmp_path)
        d2.wait_log('"rkllmd ready"')
        d2.wait_log('"session_present": true')
        time.sleep(2)
        assert not set(_events(d2, "request queued")) & set(ids), d2.log_text()[-3000:]
    finally:
        p.close()
        d.stop()
        if d2 is not None:
            assert d2.stop() == 0
        b.stop()


def test_a_restarted_broker_without_persistence_hears_rkllmd_again_at_once(
    fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """Without broker persistence a request is dropped unless rkllmd has subscribed again: after a
    4 s outage rkllmd is back within seconds, not the half minute a refused connection waits, and
    from the moment its retained ``online`` is there again (sent after its subscriptions) every
    request is answered. (The figure itself, the time to the subscription, is measured by
    benchmarks/broker_restart.py: on a busy machine it is no test's business.)"""
    base = f"bg{uuid.uuid4().hex[:6]}"
    b: Broker = start_broker(tmp_path)
    d = DaemonProc(rkllm_config(tmp_path, b, fake_libs["1.3"], base), tmp_path)
    p: Probe | None = None
    try:
        d.wait_log('"rkllmd ready"')
        b.stop()
        time.sleep(4)  # the outage, long enough for the reconnect waits to reach their cap
        b = start_broker(tmp_path, port=b.port)  # returns once the port accepts connections
        back = time.monotonic()
        p = Probe(b)
        p.subscribe(f"{base}/state", f"{base}-reply/x")  # the new broker has no retained state
        assert p.get(f"{base}/state", timeout=30).json() == {"state": "online"}
        heard = time.monotonic() - back
        assert heard < 5.0, f"rkllmd came back {heard:.1f} s after the broker (its waits are <= 0.5 s)"
        ids = {f"m{i}" for i in range(10)}
        for rid in sorted(ids):
            p.publish(f"{base}/request/models", {"id": rid, "reply_to": f"{base}-reply/x"})
            time.sleep(0.05)
        answered = set()
        deadline = time.monotonic() + 10
        while answered != ids and time.monotonic() < deadline:
            try:
                answered.add(json.loads(p.get(f"{base}-reply/x", timeout=1).payload)["id"])
            except TimeoutError:
                continue
        assert answered == ids, f"lost: {sorted(ids - answered)}"
    finally:
        if p is not None:
            p.close()
        assert d.stop() == 0
        b.stop()


def test_the_shipped_broker_config_keeps_requests_for_rkllmd_across_a_broker_restart(
    fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """config/mosquitto/mosquitto.conf included as Debian includes it (its main file names the
    persistence location; it also says `persistence true`, left out here so that the shipped file
    must turn it on): a request sent while rkllmd is stopped, its session kept, survives a restart
    of the broker and is answered when rkllmd is back."""
    store, confd = tmp_path / "store", tmp_path / "conf.d"
    store.mkdir()
    confd.mkdir()
    port = free_port()
    passwd = mosquitto_passwd(tmp_path / "passwd", {"rkllmd": "rk-secret", "alice": "alice-pw"})
    acl = tmp_path / "rkllmd.acl"
    acl.write_text((REPO / "config" / "mosquitto" / "rkllmd.acl").read_text())
    (confd / "rkllmd.conf").write_text(shipped_broker_conf(port, passwd, acl))
    main = f"persistence_location {store}/\nlog_dest stderr\ninclude_dir {confd}\n"
    b = launch_broker(tmp_path, port, main)
    (tmp_path / "rk.pw").write_text("rk-secret")
    (tmp_path / "rk.pw").chmod(0o600)  # rkllmd refuses a password every user may read
    mqtt = {
        "username": "rkllmd",
        "password_file": str(tmp_path / "rk.pw"),
        "clean_start": False,
        "session_expiry_s": 300,
    }
    cfg = rkllm_config(tmp_path, b, fake_libs["1.3"], "rkllmd", mqtt=mqtt)
    d = DaemonProc(cfg, tmp_path)
    d2: DaemonProc | None = None
    alice = ClientProbe(b, client_id="alice-1", clean_start=False, username="alice", password="alice-pw")
    try:
        d.wait_log('"rkllmd ready"')
        assert d.stop() == 0  # a clean stop: the broker keeps rkllmd's session and queues for it
        assert alice.subscribe_checked("reply/alice/x")
        alice.publish(
            "rkllmd/request/generate", {"id": "q1", "prompt": "asked while away", "reply_to": "reply/alice/x"}
        )
        b.stop()
        b = launch_broker(tmp_path, port, main)
        d2 = DaemonProc(cfg, tmp_path)
        reply = json.loads(alice.get("reply/alice/x", timeout=30).payload)
        assert reply["id"] == "q1" and reply["status"] == "ok", reply
    finally:
        alice.close()
        if d2 is not None:
            assert d2.stop() == 0
        b.stop()
