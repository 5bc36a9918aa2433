"""Crash isolation: a native crash or a wedged runtime costs one request, never the daemon."""

from __future__ import annotations

import os
import time

from tests.e2e.conftest import Start, final_of
from tests.helpers import Msg, Probe


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes once reaped or defunct
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_segfault_costs_one_request_and_the_model_is_reloaded(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A SIGSEGV in the runtime answers the in-flight request with runtime_crashed; the next one works."""
    d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/generate", f"{base}/stats")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "boom", "prompt": "[[crash_at=3]] a b c d e"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["id"] == "boom" and r["code"] == "runtime_crashed" and "SIGSEGV" in r["error"]
    assert r["error"].endswith("the model is reloaded"), r["error"]
    assert r["data"]["text"]  # the tokens before the crash are kept
    mqtt_probe.publish(f"{base}/request/generate", {"id": "after", "prompt": "are you back"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["status"] == "ok" and r["id"] == "after"
    assert d.proc.poll() is None
    # stats are throttled (leading and trailing, 250 ms): the last state comes by the trailing publish
    stats = mqtt_probe.collect_until(f"{base}/stats", lambda m: m.json()["crashes"] == 1, timeout=5)
    later = [m.json() for m in mqtt_probe.drain() if m.topic.endswith("/stats")]
    assert stats[-1].json()["crashes"] == 1 and all(s["crashes"] == 1 for s in later)


def test_sigill_reply_says_the_build_does_not_fit_this_cpu(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A SIGILL in the runtime is answered with what it means and what to do, not just "crashed"."""
    d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "ill", "prompt": "[[sigill_at=2]] a b c"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["id"] == "ill" and r["code"] == "runtime_crashed"
    assert "SIGILL" in r["error"] and "illegal instruction" in r["error"]
    assert "built for this board" in r["error"]  # the fix for librkllmrt.so
    d.wait_log("built for this board", timeout=10)  # and the log says the same
    assert d.proc.poll() is None


def test_wedged_runtime_is_killed_after_abort_grace(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A runtime that stops producing tokens and ignores abort is killed; the reply is a timeout."""
    _d, base = start_daemon(limits={"stall_timeout_s": 0.5, "abort_grace_s": 0.5})
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "stuck", "prompt": "[[hang_at=3]] a b c d e"})
    r = final_of(mqtt_probe, f"{base}/response/generate", timeout=30)
    assert r["id"] == "stuck" and r["code"] == "timeout"
    assert "no new token" in r["error"] and "killed" in r["error"]
    mqtt_probe.publish(f"{base}/request/generate", {"id": "next", "prompt": "hello again"})
    assert final_of(mqtt_probe, f"{base}/response/generate")["status"] == "ok"


def test_cancel_of_a_hung_run_is_answered_cancelled(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A runtime that ignores the abort a cancel asks for is killed after limits.abort_grace_s; the
    request still ends as asked: ok, finish_reason cancelled, with the text made before the hang,
    and its stream ends cancelled too. The next request works (the model is reloaded)."""
    _d, base = start_daemon(limits={"abort_grace_s": 0.5})
    mqtt_probe.subscribe(f"{base}/response/#", f"{base}/stream/hung")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "hung", "prompt": "[[hang_at=3]] a b c d e"})
    # It runs: two tokens, then it hangs. The cancel must come after the second (a cancel before
    # it would be obeyed, as the double hangs only at the third), so wait to see both.
    said: list[str] = []

    def two_tokens(m: Msg) -> bool:
        said.append(m.json().get("delta", ""))
        return "".join(said) == "A B"

    mqtt_probe.collect_until(f"{base}/stream/hung", two_tokens, timeout=20)
    mqtt_probe.publish(f"{base}/request/cancel", "hung")
    assert final_of(mqtt_probe, f"{base}/response/cancel")["data"]["was"] == "running"
    r = final_of(mqtt_probe, f"{base}/response/generate", timeout=30)
    assert r["status"] == "ok" and r["data"]["finish_reason"] == "cancelled", r
    assert r["data"]["text"] == "A B"
    end = mqtt_probe.collect_until(f"{base}/stream/hung", lambda m: m.json().get("done"), timeout=5)[-1]
    assert end.json()["finish_reason"] == "cancelled" and end.json()["status"] == "ok"
    mqtt_probe.publish(f"{base}/request/generate", {"id": "next", "prompt": "hello again"})
    assert final_of(mqtt_probe, f"{base}/response/generate")["status"] == "ok"


def test_restart_budget_stops_a_crash_loop(start_daemon: Start, mqtt_probe: Probe) -> None:
    """Beyond the restart budget the model is not reloaded and requests get model_load_failed."""
    d, base = start_daemon(limits={"restart_budget": 0})
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"prompt": "[[crash_at=1]] x"})
    crash = final_of(mqtt_probe, f"{base}/response/generate")
    # the crash that spends the budget says so, and never that the model is reloaded
    assert crash["code"] == "runtime_crashed" and "is reloaded" not in crash["error"], crash
    assert "the model is not reloaded: it crashed 1 times in 600 s" in crash["error"], crash
    mqtt_probe.publish(f"{base}/request/generate", {"prompt": "again"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["code"] == "model_load_failed" and "crashed 1 times" in r["error"]
    assert d.proc.poll() is None


def test_unload_ends_the_worker_process(start_daemon: Start, mqtt_probe: Probe) -> None:
    """Unloading a model ends its worker process, which returns all of its native memory."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/info", f"{base}/response/unload")
    info = mqtt_probe.collect_until(f"{base}/info", lambda m: m.json()["runtime"] is not None)[-1].json()
    pid = info["runtime"]["pid"]
    assert info["runtime"]["isolation"] == "process" and _pid_alive(pid)
    mqtt_probe.publish(f"{base}/request/unload", "")
    assert final_of(mqtt_probe, f"{base}/response/unload")["status"] == "ok"
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
