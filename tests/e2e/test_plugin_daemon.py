"""Plugins end to end: rkllmd as a process over real mosquitto, with the shipped plugins enabled."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.testing import wait_until
from tests.helpers import Broker, DaemonProc, Probe, retained, wait_retained

BASE = "plg"
CLIENT = "plgd"
DISCOVERY = f"homeassistant/device/{CLIENT}/config"


def config(
    tmp: Path, broker: Broker, body: str, *, base: str = BASE, client: str = CLIENT, preload: bool = True
) -> Path:
    path = tmp / f"{client}.toml"
    path.write_text(
        f"preload = {'true' if preload else 'false'}\n"
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'base_topic = "{base}"\nclient_id = "{client}"\n'
        '[log]\nformat = "json"\n' + body
    )
    return path


# --- without a model: lifecycle over the broker -------------------------------------------------


def test_not_ready_fatal_and_removal(broker: Broker, tmp_path: Path, mqtt_probe: Probe) -> None:
    """Statuses are retained: not_ready then running, failed for a broken plugin while the daemon
    serves on; a later start without the HA plugin removes its discovery."""
    flag = tmp_path / "ready"
    (tmp_path / "file").write_text("")
    cfg = config(
        tmp_path,
        broker,
        preload=False,
        client="plgx",
        base="plgx",
        body=(
            '[plugins]\nenabled = ["example", "transcript", "homeassistant"]\n'
            f'[plugins.example]\nwait_for = "{flag}"\n'
            f'[plugins.transcript]\npath = "{tmp_path / "file" / "t.jsonl"}"\n'
        ),
    )
    d = DaemonProc(cfg, tmp_path)
    try:
        d.wait_log("rkllmd ready")
        assert retained(mqtt_probe, "plgx/plugins/example/status")["state"] == "not_ready"
        failed = retained(mqtt_probe, "plgx/plugins/transcript/status")
        assert failed["state"] == "failed" and "FileExistsError" in failed["error"]
        assert "plugin disabled after a fatal error" in d.log_text()
        flag.touch()
        st = wait_retained(mqtt_probe, "plgx/plugins/example/status", lambda v: v and v["state"] == "running")
        assert st["state"] == "running"
        # the daemon goes on
        mqtt_probe.subscribe("plgx/response/models")
        mqtt_probe.publish("plgx/request/models", "")
        assert mqtt_probe.get("plgx/response/models").json()["status"] == "ok"
        assert retained(mqtt_probe, "homeassistant/device/plgx/config")["o"]["name"] == "rkllmd"
    finally:
        assert d.stop() == 0
    assert retained(mqtt_probe, "plgx/plugins/example/status")["state"] == "stopped"
    # discovery stays while rkllmd is merely stopped (HA shows it unavailable) ...
    assert retained(mqtt_probe, "homeassistant/device/plgx/config") is not None
    # ... and goes once the plugin is no longer enabled
    cfg2 = config(tmp_path, broker, preload=False, client="plgx", base="plgx", body="")
    d2 = DaemonProc(cfg2, tmp_path)
    try:
        d2.wait_log("rkllmd ready")
        gone = wait_retained(mqtt_probe, "homeassistant/device/plgx/config", lambda v: v is None)
        assert gone is None
        assert "Home Assistant discovery removed" in d2.log_text()
    finally:
        assert d2.stop() == 0


# --- with SmolLM2: every shipped plugin at once --------------------------------------------------

PLUGINS_TOML = """
[models.smollm2]
runtime = "llamacpp"
max_context_len = 512
temperature = 0.0
[models.smol2]
runtime = "llamacpp"
max_context_len = 512
[plugins]
enabled = ["templates", "sessions", "republish", "transcript", "npu", "example", "homeassistant"]
[plugins.templates.templates.kitchen]
prompt = "In the {area}: {question}"
system = "You are a terse assistant in the {area}."
[plugins.republish]
routes = [{ topic = "tts/say", payload = "{text}", when_field = "speak" }]
[plugins.transcript]
path = "TRANSCRIPT"
[plugins.npu]
path = "NPULOAD"
interval_s = 0
[plugins.homeassistant]
birth_delay_s = 0.2
"""


@pytest.fixture(scope="module")
def smol(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProc, Path]]:
    tmp = tmp_path_factory.mktemp("plugins")
    (tmp / "npu-load").write_text("NPU load:  Core0: 30%, Core1: 10%, Core2:  5%,\n")
    body = PLUGINS_TOML.replace("TRANSCRIPT", str(tmp / "t.jsonl")).replace("NPULOAD", str(tmp / "npu-load"))
    d = DaemonProc(config(tmp, broker, body), tmp)
    d.wait_ready(60)
    yield d, tmp
    assert d.stop() == 0


def ask(
    probe: Probe, payload: dict[str, Any] | str, rid: str, topic: str = f"{BASE}/request/generate"
) -> Any:
    probe.subscribe(f"{rid}/reply")
    probe.publish(topic, payload, response_topic=f"{rid}/reply")
    return probe.get(f"{rid}/reply", timeout=60).json()


@pytest.mark.model
def test_template_topic_and_missing_variable(smol: tuple[DaemonProc, Path], mqtt_probe: Probe) -> None:
    """A template topic fills prompt and system from extra fields; a missing one names the plugin."""
    _, tmp = smol
    reply = ask(
        mqtt_probe,
        {"id": "tk", "area": "kitchen", "question": "Say hi.", "max_tokens": 8},
        "tk",
        f"{BASE}/plugins/templates/kitchen",
    )
    assert reply["status"] == "ok" and reply["id"] == "tk" and reply["data"]["text"]
    # the transcript is written by a router, just after the reply is sent
    assert wait_until(lambda: '"id": "tk"' in (tmp / "t.jsonl").read_text(), 5)
    line = next(json.loads(x) for x in (tmp / "t.jsonl").read_text().splitlines() if '"id": "tk"' in x)
    assert line["request"]["prompt"] == "In the kitchen: Say hi."
    assert line["original"]["area"] == "kitchen" and line["text"] == reply["data"]["text"]
    bad = ask(mqtt_probe, {"template": "kitchen", "question": "?"}, "tk2")
    assert bad["status"] == "error" and bad["code"] == "bad_request"
    assert "plugin 'templates'" in bad["error"] and "'area'" in bad["error"]


@pytest.mark.model
def test_session_grows_and_clears(smol: tuple[DaemonProc, Path], mqtt_probe: Probe) -> None:
    """A second turn in a session carries the first (more prompt tokens); clearing forgets it."""
    first = ask(mqtt_probe, {"session": "s1", "prompt": "My name is Ada.", "max_tokens": 8}, "s1a")
    second = ask(mqtt_probe, {"session": "s1", "prompt": "What is my name?", "max_tokens": 8}, "s1b")
    assert first["status"] == second["status"] == "ok"
    assert second["data"]["usage"]["prompt_tokens"] > first["data"]["usage"]["prompt_tokens"] + 5
    mqtt_probe.subscribe("clr/reply")
    mqtt_probe.publish(f"{BASE}/plugins/sessions/clear", "s1", response_topic="clr/reply")
    assert mqtt_probe.get("clr/reply").json()["data"] == {"session": "s1", "cleared": True}
    third = ask(mqtt_probe, {"session": "s1", "prompt": "My name is Ada.", "max_tokens": 8}, "s1c")
    assert third["data"]["usage"]["prompt_tokens"] == first["data"]["usage"]["prompt_tokens"]


@pytest.mark.model
def test_republish_and_stats(smol: tuple[DaemonProc, Path], mqtt_probe: Probe) -> None:
    """`speak: true` sends the text to the TTS topic; stats carry plugin contributions and NPU load."""
    mqtt_probe.subscribe("tts/say")
    reply = ask(mqtt_probe, {"prompt": "Say hello.", "speak": True, "max_tokens": 8}, "sp")
    assert mqtt_probe.get("tts/say").payload.decode() == reply["data"]["text"]
    # The stats published with a reply count the answers routed before it: this answer's count
    # comes with a later publish, so wait for it rather than read whatever is retained now.
    stats = wait_retained(
        mqtt_probe, f"{BASE}/stats", lambda v: v and v["plugins"]["example"]["answers"] >= 1
    )
    assert stats["plugins"]["npu"] == {"load_percent": 15.0, "cores": [30, 10, 5]}
    assert stats["plugins"]["example"]["answers"] >= 1 and "sessions" in stats["plugins"]


@pytest.mark.model
def test_ha_discovery_topics_are_real(
    smol: tuple[DaemonProc, Path], mqtt_probe: Probe, broker: Broker
) -> None:
    """Every state topic in the discovery payload carries rkllmd's messages; every command topic acts:
    the text entity asks, the select loads a model, the unload and cancel buttons work."""
    disc = retained(mqtt_probe, DISCOVERY)
    cmps = disc["cmps"]
    states = {c[k] for c in cmps.values() for k in ("stat_t", "json_attr_t") if k in c}
    states |= {a["topic"] for a in disc["avty"]}
    commands = {c["cmd_t"] for c in cmps.values() if "cmd_t" in c}
    assert commands == {
        f"{BASE}/request/load",
        f"{BASE}/request/generate",
        f"{BASE}/request/unload",
        f"{BASE}/plugins/homeassistant/cancel",
    }
    mqtt_probe.subscribe(*states, f"{BASE}/response/#")
    mqtt_probe.drain()
    # text entity: a plain-text prompt
    mqtt_probe.publish(cmps["prompt"]["cmd_t"], "Say yes.")
    # The previous test's answer is retained there, and the plugin may publish it live after that
    # test's reply (its output route runs after the final): wait for this prompt's own answer.
    live = mqtt_probe.collect_until(
        cmps["last_answer"]["stat_t"],
        lambda m: not m.retain and m.json().get("prompt") == "Say yes.",
        timeout=60,
    )
    answer_msg = live[-1]
    answer = answer_msg.json()
    assert answer["text"]
    events = mqtt_probe.collect_until(
        cmps["answer"]["stat_t"], lambda m: m.json().get("text") == answer["text"], timeout=5
    )
    event_msg = events[-1]
    assert event_msg.json()["event_type"] == "answer"
    seen = {answer_msg.topic, event_msg.topic}
    # select: load the other model
    mqtt_probe.publish(cmps["model"]["cmd_t"], "smol2")
    assert mqtt_probe.get(f"{BASE}/response/load", timeout=60).json()["data"] == {
        "model": "smol2",
        "loaded": True,
    }
    seen |= {m.topic for m in mqtt_probe.drain()}
    # the select's state: stats are published just after the load reply
    stats = wait_retained(mqtt_probe, cmps["model"]["stat_t"], lambda v: v and v["loaded_model"] == "smol2")
    assert stats["loaded_model"] == "smol2"
    # button: unload
    mqtt_probe.publish(cmps["unload"]["cmd_t"], cmps["unload"]["pl_prs"])
    assert mqtt_probe.get(f"{BASE}/response/unload", timeout=30).json()["data"]["loaded"] is False
    # button: cancel the running request
    mqtt_probe.subscribe(f"{BASE}/stream/hc", "hc/reply")
    # Long enough that only the button ends it: 16 tokens took SmolLM2 a few hundred ms, less than
    # the button's round trip through the broker and the plugin can take on a busy machine.
    mqtt_probe.publish(
        f"{BASE}/request/generate",
        {"id": "hc", "prompt": "Write a very long story about a dragon.", "max_tokens": 1500},
        response_topic="hc/reply",
    )
    mqtt_probe.get(f"{BASE}/stream/hc", timeout=60)
    mqtt_probe.publish(cmps["cancel"]["cmd_t"], cmps["cancel"]["pl_prs"])
    final = mqtt_probe.get("hc/reply", timeout=60).json()
    assert final["data"]["finish_reason"] == "cancelled", final
    assert final["data"]["usage"]["completion_tokens"] < 1500
    seen |= {m.topic for m in mqtt_probe.drain()}
    for topic in states:  # state topics with retained messages, or seen during the run
        assert topic in seen or retained(mqtt_probe, topic) is not None, topic


@pytest.mark.model
def test_ha_birth_resends_discovery(smol: tuple[DaemonProc, Path], mqtt_probe: Probe) -> None:
    """Home Assistant's birth message makes rkllmd re-send its discovery within the delay."""
    mqtt_probe.subscribe(DISCOVERY)
    mqtt_probe.get(DISCOVERY)  # the retained copy
    t0 = time.monotonic()
    mqtt_probe.publish("homeassistant/status", "online")
    again = mqtt_probe.get(DISCOVERY, timeout=5)
    assert not again.retain and time.monotonic() - t0 < 2
    assert again.json()["cmps"]["model"]["ops"] == ["smollm2", "smol2"]
