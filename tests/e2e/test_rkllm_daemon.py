"""rkllmd as a process, over real mosquitto, through the ctypes binding and the C runtime double."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Start, final_of
from tests.helpers import Broker, Probe


def stream_of(probe: Probe, base: str, rid: str, timeout: float = 20.0) -> list[dict]:
    msgs = probe.collect_until(f"{base}/stream/{rid}", lambda m: m.json().get("done"), timeout=timeout)
    return [m.json() for m in msgs]


@pytest.mark.parametrize("abi", ["1.2", "1.3", "1.3.1"])
def test_stream_is_ordered_complete_and_matches_final_reply(
    start_daemon: Start, mqtt_probe: Probe, abi: str
) -> None:
    """Tokens arrive in order with contiguous seq numbers and concatenate to the final text."""
    _d, base = start_daemon(abi)
    mqtt_probe.subscribe(f"{base}/stream/#", "reply/mine")
    # 50 tok/s: the stream keeps up, so every token is a chunk of its own
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": "r1", "prompt": "[[delay_ms=20]] alpha beta gamma delta", "transaction": {"n": 7}},
        response_topic="reply/mine",
        correlation_data=b"\x00corr\xff",
    )
    chunks = stream_of(mqtt_probe, base, "r1")
    reply_msg = mqtt_probe.get("reply/mine")
    reply = reply_msg.json()
    deltas = [c for c in chunks if "delta" in c]
    assert [c["seq"] for c in deltas] == list(range(len(deltas)))
    assert len(deltas) >= 3
    assert chunks[-1]["done"] is True and chunks[-1]["finish_reason"] == "stop"
    assert reply["status"] == "ok" and reply["id"] == "r1" and reply["transaction"] == {"n": 7}
    assert reply_msg.correlation_data == b"\x00corr\xff"
    assert "".join(c["delta"] for c in deltas) == reply["data"]["text"]
    assert reply["data"]["usage"]["completion_tokens"] == len(deltas)
    assert chunks[-1]["seq"] == len(deltas)
    timings = reply["data"]["timings"]
    assert timings["ttft_ms"] > 0 and timings["decode_tokens_per_s"] > 0 and timings["prefill_ms"] > 0


def test_a_stream_that_falls_behind_is_coalesced_without_changing_the_text(
    start_daemon: Start, mqtt_probe: Probe
) -> None:
    """An unthrottled answer comes in fewer chunks than tokens, joined to the exact text, seq gap-free."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/stream/#", f"{base}/response/generate")
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": "fast", "prompt": "[[len=2000]] [[split_utf8]] a b c", "max_tokens": 2000},
    )
    chunks = stream_of(mqtt_probe, base, "fast", timeout=60)
    reply = final_of(mqtt_probe, f"{base}/response/generate")
    deltas = [c for c in chunks if "delta" in c]
    assert reply["status"] == "ok" and reply["data"]["usage"]["completion_tokens"] == 2000
    assert "".join(c["delta"] for c in deltas) == reply["data"]["text"] and "\u20ac" in reply["data"]["text"]
    assert [c["seq"] for c in deltas] == list(range(len(deltas))) and chunks[-1]["seq"] == len(deltas)
    assert len(deltas) < 2000


def test_text_stream_reads_as_running_text(start_daemon: Start, mqtt_probe: Probe) -> None:
    """The /text stream carries the bare deltas and ends with a newline, for mosquitto_sub -N."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/stream/t1/text", f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "t1", "prompt": "one two three"})
    reply = final_of(mqtt_probe, f"{base}/response/generate")
    pieces = [m.payload.decode() for m in mqtt_probe.drain() if m.topic.endswith("/text")]
    # stragglers can only be text messages published before the reply
    assert "".join(pieces) == reply["data"]["text"] + "\n"


def test_plain_text_prompt_from_mosquitto_pub(start_daemon: Start, mqtt_probe: Probe, broker: Broker) -> None:
    """A plain-text payload from the real mosquitto_pub is a prompt answered on the default topic."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/generate")
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            f"{base}/request/generate",
            "-m",
            "hello from the shell",
        ],
        check=True,
        timeout=10,
    )
    reply = final_of(mqtt_probe, f"{base}/response/generate")
    assert reply["status"] == "ok"
    assert reply["data"]["text"].strip()
    assert reply["data"]["finish_reason"] == "stop"


def test_mosquitto_rr_gets_the_complete_answer(start_daemon: Start, broker: Broker) -> None:
    """The real mosquitto_rr prints exactly one message: the complete final reply."""
    _d, base = start_daemon()
    out = subprocess.run(
        [
            "mosquitto_rr",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            f"{base}/request/generate",
            "-e",
            f"{base}-rr/reply",
            "-m",
            "what is the capital",
            "-W",
            "20",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    reply = json.loads(out.stdout)
    assert reply["status"] == "ok"
    assert reply["data"]["finish_reason"] == "stop"
    assert len(reply["data"]["text"]) > 0


def test_split_utf8_character_arrives_whole(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A multi-byte character split across two runtime callbacks reaches the stream whole."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/stream/#", f"{base}/response/generate")
    mqtt_probe.publish(
        f"{base}/request/generate", {"id": "u1", "prompt": "[[split_utf8]] café price list for today"}
    )
    chunks = stream_of(mqtt_probe, base, "u1")
    reply = final_of(mqtt_probe, f"{base}/response/generate")
    text = reply["data"]["text"]
    assert "\ufffd" not in text
    assert any(ord(ch) > 127 for ch in text)
    for c in chunks:
        if "delta" in c:
            assert "\ufffd" not in c["delta"]
    assert "".join(c.get("delta", "") for c in chunks) == text


def test_cancel_running_generation(start_daemon: Start, mqtt_probe: Probe) -> None:
    """Cancel by id aborts a running generation; its final reply is marked cancelled."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/stream/c1", f"{base}/response/#")
    mqtt_probe.publish(
        f"{base}/request/generate", {"id": "c1", "prompt": "[[delay_ms=100]] [[len=200]] go on"}
    )
    mqtt_probe.get(f"{base}/stream/c1", timeout=10)  # it is running
    mqtt_probe.publish(f"{base}/request/cancel", {"id": "c1"})
    ack = final_of(mqtt_probe, f"{base}/response/cancel")
    final = final_of(mqtt_probe, f"{base}/response/generate")
    assert ack["status"] == "ok" and ack["data"]["was"] == "running"
    assert final["id"] == "c1" and final["status"] == "ok"
    assert final["data"]["finish_reason"] == "cancelled"
    assert final["data"]["usage"]["completion_tokens"] < 200


def test_cancel_queued_request_and_busy_when_full(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A queued request can be cancelled; a request beyond the queue bound is answered busy at once."""
    _d, base = start_daemon(limits={"queue_size": 1})
    mqtt_probe.subscribe(f"{base}/stream/q1", f"{base}/response/#")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "q1", "prompt": "[[delay_ms=100]] [[len=100]] x"})
    mqtt_probe.get(f"{base}/stream/q1", timeout=10)
    mqtt_probe.publish(f"{base}/request/generate", {"id": "q2", "prompt": "queued one"})
    mqtt_probe.publish(f"{base}/request/generate", {"id": "q3", "prompt": "one too many"})
    busy = final_of(mqtt_probe, f"{base}/response/generate")
    assert busy["id"] == "q3" and busy["status"] == "error" and busy["code"] == "busy"
    mqtt_probe.publish(f"{base}/request/cancel", "q2")
    ack = final_of(mqtt_probe, f"{base}/response/cancel")
    assert ack["status"] == "ok" and ack["data"]["was"] == "queued"
    q2 = final_of(mqtt_probe, f"{base}/response/generate")
    assert q2["id"] == "q2" and q2["data"]["finish_reason"] == "cancelled" and q2["data"]["text"] == ""
    mqtt_probe.publish(f"{base}/request/cancel", "q1")
    assert final_of(mqtt_probe, f"{base}/response/cancel")["data"]["was"] == "running"
    q1 = final_of(mqtt_probe, f"{base}/response/generate")
    assert q1["id"] == "q1" and q1["data"]["finish_reason"] == "cancelled"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"prompt": "unterminated', "bad_json"),
        (b'{"prompt": 42}', "wrong_type"),
        (b'{"prompt": "hi", "max_tokens": "ten"}', "wrong_type"),
        (b'{"prompt": "   "}', "empty_prompt"),
        (b"", "empty_prompt"),
        (b'{"prompt": "hi", "model": "nope"}', "unknown_model"),
        (b'{"prompt": "hi", "max_tokens": 99999999}', "bad_request"),
        (b'{"prompt": "hi", "colour": "red"}', "bad_request"),
        (b"\xff\xfe not utf8", "bad_request"),
        (b"x" * 5000, "payload_too_large"),
    ],
)
def test_bad_input_gets_error_envelope(
    start_daemon: Start, mqtt_probe: Probe, payload: bytes, code: str
) -> None:
    """Every kind of bad input is answered with the one error envelope and a stable code."""
    d, base = start_daemon()
    mqtt_probe.subscribe("bad/reply")
    mqtt_probe.publish(f"{base}/request/generate", payload, response_topic="bad/reply", correlation_data=b"k")
    reply = mqtt_probe.get("bad/reply")
    body = reply.json()
    assert body["status"] == "error" and body["code"] == code and body["error"]
    assert reply.correlation_data == b"k"
    assert d.proc.poll() is None


def test_runtime_error_at_token_n(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A runtime ERROR mid-run becomes a runtime_error reply with the partial text; the daemon goes on."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "e1", "prompt": "[[fail_at=3]] a b c d e f"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["status"] == "error" and r["code"] == "runtime_error" and r["id"] == "e1"
    assert "rkllm_run" in r["error"]
    mqtt_probe.publish(f"{base}/request/generate", {"id": "e2", "prompt": "still alive"})
    r2 = final_of(mqtt_probe, f"{base}/response/generate")
    assert r2["status"] == "ok" and r2["id"] == "e2"


def test_first_token_and_total_timeouts(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A generation over its first-token or total time limit is aborted with a timeout error."""
    # slow1's first token is 1.5 s away, over the limit by 0.5 s however busy the machine (a slower
    # one is further over); slow2's comes after 0.2 s, with 0.8 s to spare for the worker's hop.
    _d, base = start_daemon(limits={"first_token_timeout_s": 1.0, "total_timeout_s": 2.0})
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "slow1", "prompt": "[[delay_ms=1500]] a b"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["code"] == "timeout" and "first token" in r["error"]
    mqtt_probe.publish(
        f"{base}/request/generate", {"id": "slow2", "prompt": "[[delay_ms=200]] [[len=100]] a b"}
    )
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["code"] == "timeout" and r["data"]["text"]


def test_max_tokens_limits_completion(start_daemon: Start, mqtt_probe: Probe) -> None:
    """max_tokens caps the completion and the reply says finish_reason length."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"prompt": "[[len=50]] a b c", "max_tokens": 4})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["data"]["finish_reason"] == "length"
    assert r["data"]["usage"]["completion_tokens"] == 4


def test_context_exceeded_is_refused_before_the_runtime(
    start_daemon: Start, mqtt_probe: Probe, tiny_tokenizer: Path
) -> None:
    """A prompt longer than the context is refused with the overshoot, counted by the tokenizer."""
    _d, base = start_daemon(model={"tokenizer": str(tiny_tokenizer), "max_context_len": 32})
    mqtt_probe.subscribe(f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "big", "prompt": "hello world " * 40})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["code"] == "context_exceeded"
    assert "too many" in r["error"] and "'fake'" in r["error"]
    assert r["data"]["completion_tokens"] == 0 and r["data"]["text"] == ""


def test_models_list_load_unload(start_daemon: Start, mqtt_probe: Probe) -> None:
    """models lists what is configured and loaded; load and unload switch it, replies in the envelope."""
    _d, base = start_daemon()
    mqtt_probe.subscribe(f"{base}/response/#", f"{base}/info")
    mqtt_probe.publish(f"{base}/request/models", "")
    r = final_of(mqtt_probe, f"{base}/response/models")
    names = {m["name"]: m for m in r["data"]["models"]}
    assert set(names) == {"fake", "other"} and names["fake"]["loaded"] and r["data"]["loaded"] == "fake"
    mqtt_probe.publish(f"{base}/request/load", {"model": "other", "transaction": 1})
    r = final_of(mqtt_probe, f"{base}/response/load")
    assert r["status"] == "ok" and r["data"]["model"] == "other" and r["transaction"] == 1
    mqtt_probe.publish(f"{base}/request/unload", "")
    r = final_of(mqtt_probe, f"{base}/response/unload")
    assert r["status"] == "ok"
    mqtt_probe.publish(f"{base}/request/models", "")
    r = final_of(mqtt_probe, f"{base}/response/models")
    assert r["data"]["loaded"] is None
    mqtt_probe.publish(f"{base}/request/load", "nope")
    r = final_of(mqtt_probe, f"{base}/response/load")
    assert r["code"] == "unknown_model"


def test_state_info_and_stats_are_retained(start_daemon: Start, mqtt_probe: Probe, broker: Broker) -> None:
    """online, info (runtime and its detected version) and stats are retained for late subscribers."""
    _d, base = start_daemon()
    watcher = Probe(broker)
    try:
        watcher.subscribe(f"{base}/stats")
        mqtt_probe.subscribe(f"{base}/response/generate")
        mqtt_probe.publish(f"{base}/request/generate", "warm up")
        final_of(mqtt_probe, f"{base}/response/generate")
        # The stats after the reply may be held for the throttle's trailing publish: wait until
        # they went out rather than guess how long that takes.
        watcher.collect_until(f"{base}/stats", lambda m: m.json()["requests"] >= 1 and not m.json()["busy"])
    finally:
        watcher.close()
    mqtt_probe.subscribe(f"{base}/state", f"{base}/info", f"{base}/stats")  # a late subscriber
    got = {}
    for _ in range(3):
        m = mqtt_probe.get(f"{base}/#")
        assert m.retain
        got[m.topic.rsplit("/", 1)[1]] = m.json()
    assert got["state"] == {"state": "online"}
    assert got["info"]["runtime"]["runtime"] == "rkllm"
    assert got["info"]["runtime"]["version"].startswith("1.3")
    assert got["stats"]["requests"] >= 1 and got["stats"]["queue_depth"] == 0


def test_sigterm_during_generation(start_daemon: Start, mqtt_probe: Probe) -> None:
    """SIGTERM mid-generation: the reply says shutdown, 'stopped' is retained, exit code 0."""
    d, base = start_daemon(limits={"shutdown_grace_s": 0.3})
    mqtt_probe.subscribe(f"{base}/stream/s1", f"{base}/response/generate", f"{base}/state")
    mqtt_probe.get(f"{base}/state")  # retained online
    mqtt_probe.publish(f"{base}/request/generate", {"id": "s1", "prompt": "[[delay_ms=100]] [[len=300]] x"})
    mqtt_probe.get(f"{base}/stream/s1", timeout=10)
    d.signal(signal.SIGTERM)
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["id"] == "s1" and r["code"] == "shutdown" and "shutdown" in r["error"]
    state = mqtt_probe.get(f"{base}/state").json()
    assert state == {"state": "stopped"}
    assert d.proc.wait(timeout=20) == 0


def test_mqtt_311_with_reply_to_in_payload(start_daemon: Start, broker: Broker) -> None:
    """With MQTT 3.1.1 (no v5 properties) the reply goes to reply_to from the JSON payload."""
    import paho.mqtt.client as mqtt

    _d, base = start_daemon(mqtt={"protocol": "3.1.1"})
    p = Probe(broker, protocol=mqtt.MQTTv311)
    try:
        p.subscribe("ha/answer")
        p.publish(
            f"{base}/request/generate", {"prompt": "hi there", "reply_to": "ha/answer", "transaction": "t"}
        )
        r = p.get("ha/answer").json()
        assert r["status"] == "ok" and r["transaction"] == "t"
    finally:
        p.close()


def test_reconnects_resubscribes_and_republishes_after_broker_restart(
    fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """After the broker restarts, rkllmd reconnects, re-publishes online and answers requests again."""
    from tests.e2e.conftest import rkllm_config
    from tests.helpers import DaemonProc, start_broker

    b = start_broker(tmp_path)
    cfg = rkllm_config(tmp_path, b, fake_libs["1.3"], "rc")
    d = DaemonProc(cfg, tmp_path)
    try:
        d.wait_ready()
        b.stop()
        time.sleep(1.0)
        b = start_broker(tmp_path, port=b.port)
        p = Probe(b)
        try:
            p.subscribe("rc/state")
            assert p.get("rc/state", timeout=40).json() == {"state": "online"}
            p.subscribe("rc/response/generate")
            p.publish("rc/request/generate", {"id": "after", "prompt": "still there"})
            r = p.get("rc/response/generate", timeout=20).json()
            assert r["status"] == "ok" and r["id"] == "after"
        finally:
            p.close()
    finally:
        assert d.stop() == 0
        b.stop()


def test_model_that_fails_to_load_gets_an_error_and_the_daemon_goes_on(
    start_daemon: Start, mqtt_probe: Probe, tmp_path: Path, fake_libs: dict[str, Path]
) -> None:
    """A failing rkllm_init and an unplaceable library are error replies; the good model still serves."""
    broken = tmp_path / "fail-init.rkllm"
    broken.write_bytes(b"x")
    not_a_lib = tmp_path / "librkllmrt.so"
    not_a_lib.write_bytes(b"\x7fELF this is not the runtime")
    _d, base = start_daemon(
        extra_models={
            "broken": {"runtime": "rkllm", "path": str(broken), "library": str(fake_libs["1.3"])},
            "mystery": {"runtime": "rkllm", "path": str(broken), "library": str(not_a_lib)},
        }
    )
    mqtt_probe.subscribe(f"{base}/response/#")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "b1", "prompt": "hi", "model": "broken"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["id"] == "b1" and r["code"] == "model_load_failed" and "rkllm_init" in r["error"]
    mqtt_probe.publish(f"{base}/request/load", "mystery")
    r = final_of(mqtt_probe, f"{base}/response/load")
    assert r["code"] == "runtime_version" and "pin" in r["error"]
    mqtt_probe.publish(f"{base}/request/generate", {"id": "b2", "prompt": "back to normal"})
    r = final_of(mqtt_probe, f"{base}/response/generate")
    assert r["status"] == "ok" and r["data"]["model"] == "fake"
