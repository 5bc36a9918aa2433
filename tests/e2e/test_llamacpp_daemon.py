"""Real text end to end: rkllmd on its embedded default (SmolLM2 via llama.cpp) over real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, Broker, DaemonProc, Probe, die_with_parent, free_port, wait_port, write_config

pytestmark = pytest.mark.model
BASE = "llm"


@pytest.fixture(scope="module")
def smol(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """rkllmd with no models configured: it serves the embedded SmolLM2 through llama.cpp."""
    tmp = tmp_path_factory.mktemp("smol")
    cfg = write_config(
        tmp / "smol.toml",
        {
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE, "client_id": "smol"},
            "log": {"format": "json"},
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(60)
    yield d
    assert d.stop() == 0


def ask(probe: Probe, req: dict, rid: str, timeout: float = 60) -> tuple[list[dict], dict]:
    probe.subscribe(f"{BASE}/stream/{rid}", f"{rid}/reply")
    probe.publish(f"{BASE}/request/generate", {"id": rid, **req}, response_topic=f"{rid}/reply")
    chunks = [
        m.json()
        for m in probe.collect_until(f"{BASE}/stream/{rid}", lambda m: m.json().get("done"), timeout=timeout)
    ]
    return chunks, probe.get(f"{rid}/reply", timeout=timeout).json()


def test_capital_of_france_streams_paris(smol: DaemonProc, mqtt_probe: Probe) -> None:
    """A factual question gets a streamed answer that names Paris, and deltas equal the final text."""
    chunks, reply = ask(
        mqtt_probe, {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 64}, "paris"
    )
    text = "".join(c.get("delta", "") for c in chunks)
    assert reply["status"] == "ok", reply
    assert "Paris" in text
    assert text == reply["data"]["text"]
    assert "\ufffd" not in text
    usage, t = reply["data"]["usage"], reply["data"]["timings"]
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] >= len(
        [c for c in chunks if "delta" in c]
    )
    assert t["ttft_ms"] > 0 and t["decode_tokens_per_s"] > 0 and t["prefill_tokens_per_s"] > 0


def test_chat_messages_and_system_prompt(smol: DaemonProc, mqtt_probe: Probe) -> None:
    """Chat messages with a system prompt are rendered with the model's template and answered."""
    _, reply = ask(
        mqtt_probe,
        {
            "system": "You are a terse assistant. Answer in one word.",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 16,
        },
        "chat",
    )
    assert reply["status"] == "ok"
    assert "Paris" in reply["data"]["text"]


def test_cancel_mid_generation_stops_it(smol: DaemonProc, mqtt_probe: Probe) -> None:
    """Cancel during a long generation ends it early with finish_reason cancelled."""
    rid = "long"
    mqtt_probe.subscribe(f"{BASE}/stream/{rid}", f"{rid}/reply")
    mqtt_probe.publish(
        f"{BASE}/request/generate",
        {
            "id": rid,
            "prompt": "Write a very long story about a dragon.",
            "max_tokens": 1500,
            "temperature": 0.7,
        },
        response_topic=f"{rid}/reply",
    )
    for _ in range(3):
        mqtt_probe.get(f"{BASE}/stream/{rid}", timeout=60)
    # as the owner: its reply in the request's reply folder (docs/PROTOCOL.md, "cancel")
    mqtt_probe.publish(f"{BASE}/request/cancel", rid, response_topic=f"{rid}/cancel")
    reply = mqtt_probe.get(f"{rid}/reply", timeout=30).json()
    assert reply["data"]["finish_reason"] == "cancelled"
    assert 3 <= reply["data"]["usage"]["completion_tokens"] < 1500


def test_prompt_over_context_gets_context_error(smol: DaemonProc, mqtt_probe: Probe) -> None:
    """A prompt longer than the model's context is refused with context_exceeded, saying by how much."""
    _, reply = ask_error(mqtt_probe, {"prompt": "the cat sat on the mat " * 600}, "ctx")
    assert reply["code"] == "context_exceeded"
    assert "too many" in reply["error"]


def ask_error(probe: Probe, req: dict, rid: str) -> tuple[None, dict]:
    probe.subscribe(f"{rid}/reply")
    probe.publish(f"{BASE}/request/generate", {"id": rid, **req}, response_topic=f"{rid}/reply")
    return None, probe.get(f"{rid}/reply", timeout=30).json()


def test_rkllmd_ask_prints_tokens_and_summary(smol: DaemonProc, broker: Broker) -> None:
    """`rkllmd ask` streams the answer to stdout and ends with a one-line summary on stderr."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rkllmd",
            "ask",
            "What is the capital of France?",
            "--port",
            str(broker.port),
            "--base-topic",
            BASE,
            "--timeout",
            "60",
            "--max-tokens",
            "48",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "RKLLMD_CONFIG": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "tokens" in out.stderr and "tok/s" in out.stderr and "TTFT" in out.stderr


def test_rkllmd_ask_json(smol: DaemonProc, broker: Broker) -> None:
    """`rkllmd ask --json` prints the whole final reply as JSON."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rkllmd",
            "ask",
            "Say hello",
            "--port",
            str(broker.port),
            "--base-topic",
            BASE,
            "--json",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "ok"


def test_rkllmd_ask_without_daemon_says_so(broker: Broker) -> None:
    """`rkllmd ask` against a broker with no daemon ends with a clear message, not a hang."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rkllmd",
            "ask",
            "hello",
            "--port",
            str(broker.port),
            "--base-topic",
            "nobody",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "did not answer" in out.stderr


def test_quickstart_script_serves_a_question(tmp_path: Path) -> None:
    """README command 1 starts a broker and rkllmd on a throwaway port; mosquitto_rr gets an answer."""
    port = free_port()
    env = {**os.environ, "RKLLMD_MQTT__PORT": str(port), "RKLLMD_MQTT__CLIENT_ID": f"qs{port}"}
    env.pop("RKLLMD_CONFIG", None)
    log = tmp_path / "quickstart.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "quickstart.sh")],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    try:
        deadline = time.monotonic() + 300
        while '"model loaded"' not in log.read_text(errors="replace") and "model loaded" not in log.read_text(
            errors="replace"
        ):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        wait_port("127.0.0.1", port)
        assert "mosquitto_rr" in log.read_text()
        out = subprocess.run(
            [
                "mosquitto_rr",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "rkllmd/request/generate",
                "-e",
                "qs/reply",
                "-m",
                '{"prompt": "What is the capital of France?", "temperature": 0}',
                "-W",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        assert reply["status"] == "ok" and "Paris" in reply["data"]["text"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "rkllmd stopped" in text
    # the broker it started is gone too
    with pytest.raises(TimeoutError):
        wait_port("127.0.0.1", port, timeout=1)
