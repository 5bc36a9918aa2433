"""Input once misrouted or misread, end to end: rkllmd as a process over real mosquitto on the C
runtime double (which answers a prompt's words in upper case), with the Home Assistant plugin."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Probe

LIMIT = 4096  # limits.max_payload_bytes, as rkllm_config sets it
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def base(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One rkllmd for the module, with the homeassistant plugin under its own discovery prefix."""
    tmp = tmp_path_factory.mktemp("routing")
    name = "inr" + uuid.uuid4().hex[:6]
    cfg = rkllm_config(tmp, broker, fake_libs["1.3"], name)
    with cfg.open("a") as f:
        f.write('\n[plugins]\nenabled = ["homeassistant"]\n')
        f.write(f'[plugins.homeassistant]\ndiscovery_prefix = "{name}-ha"\n')
    d = DaemonProc(cfg, tmp)
    try:
        d.wait_ready(30)
        yield name
        assert d.proc.poll() is None, d.log_text()[-3000:]
    finally:
        assert d.stop() == 0
        cleaner = Probe(broker)  # the discovery is retained: leave the session's broker clean
        ha = f"{name}/plugins/homeassistant"
        for topic in (f"{name}-ha/device/{name}/config", f"{ha}/discovery", f"{ha}/answer"):
            cleaner.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        cleaner.close()


def reply_topic() -> str:
    return f"rt-{uuid.uuid4().hex[:8]}/reply"


def only_sentinel_on_default(probe: Probe, base: str) -> None:
    """Nothing reached the default reply topic before a sentinel refusal sent after the request."""
    probe.publish(f"{base}/request/generate", b"")
    first = probe.get(f"{base}/response/generate", timeout=10).json()
    assert first["code"] == "empty_prompt" and "id" not in first, first


def test_lone_surrogate_from_mosquitto_pub_is_refused_at_reply_to(
    base: str, mqtt_probe: Probe, broker: Broker
) -> None:
    """JSON.stringify's cut emoji over MQTT 3.1.1: bad_request on reply_to with id and transaction."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt, f"{base}/response/generate")
    payload = '{"prompt":"\\ud800 smile","reply_to":"' + rt + '","id":"s1","transaction":"t-s1"}'
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-t",
            f"{base}/request/generate",
            "-m",
            payload,
        ],
        check=True,
        timeout=10,
    )
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["status"] == "error" and body["code"] == "bad_request", body
    assert body["id"] == "s1" and body["transaction"] == "t-s1"
    assert "surrogate" in body["error"] and body["error"].startswith("prompt:")
    only_sentinel_on_default(mqtt_probe, base)


def test_payload_too_large_is_refused_at_reply_to_within_four_times_the_limit(
    base: str, mqtt_probe: Probe
) -> None:
    """An oversized request up to 4x the limit is answered at its reply_to with its id; a bigger one
    on the default topic without an id."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt, f"{base}/response/generate")
    mqtt_probe.publish(f"{base}/request/generate", {"id": "big1", "reply_to": rt, "prompt": "a " * LIMIT})
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["code"] == "payload_too_large" and body["id"] == "big1", body
    only_sentinel_on_default(mqtt_probe, base)
    mqtt_probe.publish(f"{base}/request/generate", {"id": "big2", "reply_to": rt, "prompt": "a " * 2 * LIMIT})
    body = mqtt_probe.get(f"{base}/response/generate", timeout=10).json()
    assert body["code"] == "payload_too_large" and "id" not in body, body


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"prompt": "alpha \u0000 beta"}, "prompt"),
        ({"messages": [{"role": "user", "content": "alpha \u0000 beta"}]}, "messages[0].content"),
        ({"prompt": "alpha beta", "system": "x\u0000"}, "system"),
    ],
)
def test_nul_never_reaches_the_runtime(
    base: str, mqtt_probe: Probe, request_body: dict[str, Any], field: str
) -> None:
    """A NUL in text is bad_request naming the field, not a prompt cut short at the NUL."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt)
    mqtt_probe.publish(f"{base}/request/generate", {**request_body, "id": "nul1", "reply_to": rt})
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["status"] == "error" and body["code"] == "bad_request", body
    assert body["id"] == "nul1" and body["error"].startswith(f"invalid request: {field}:")


def test_json_after_a_bom_is_read_as_json(base: str, mqtt_probe: Probe) -> None:
    """A BOM before JSON: reply_to and max_tokens are honoured and the model sees only the prompt."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt)
    raw = BOM + json.dumps({"id": "bom1", "prompt": "alpha beta", "reply_to": rt, "max_tokens": 1}).encode()
    mqtt_probe.publish(f"{base}/request/generate", raw)
    body = mqtt_probe.get(rt, timeout=20).json()
    assert body["status"] == "ok" and body["id"] == "bom1", body
    assert body["data"]["text"] == "ALPHA" and body["data"]["finish_reason"] == "length"


def test_unknown_role_is_bad_request_at_reply_to(base: str, mqtt_probe: Probe) -> None:
    """A role outside the set is bad_request naming the field and the allowed values."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt)
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": "w1", "reply_to": rt, "messages": [{"role": "wizard", "content": "hi"}]},
    )
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["code"] == "bad_request" and body["id"] == "w1", body
    assert "messages[0].role: must be one of" in body["error"] and "'wizard'" in body["error"]


def test_unknown_command_is_refused_at_reply_to(base: str, mqtt_probe: Probe) -> None:
    """A request on an unknown command topic is answered at its JSON reply_to, with its id."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt)
    mqtt_probe.publish(f"{base}/request/generat", {"id": "uc1", "reply_to": rt, "prompt": "hi"})
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["code"] == "unknown_command" and body["id"] == "uc1", body


def test_empty_prompt_from_the_ha_text_entity_is_an_ha_error_event(base: str, mqtt_probe: Probe) -> None:
    """The prompt text entity's empty value, refused while decoding, reaches HA as an error event."""
    disc_topic = f"{base}-ha/device/{base}/config"
    mqtt_probe.subscribe(disc_topic)
    cmps = mqtt_probe.get(disc_topic, timeout=10).json()["cmps"]
    event_topic = cmps["answer"]["stat_t"]
    mqtt_probe.subscribe(event_topic)
    mqtt_probe.publish(cmps["prompt"]["cmd_t"], b"")
    for _ in range(20):  # an event of an earlier test may still be on its way
        event = mqtt_probe.get(event_topic, timeout=10).json()
        if event.get("code") == "empty_prompt":
            break
    assert event["event_type"] == "error" and event["status"] == "error", event
    assert event["error"] and event["text"] == ""


def test_null_is_an_absent_field_with_its_default(base: str, mqtt_probe: Probe) -> None:
    """JSON null, as a Node-RED flow or an HA template writes an unset field, is the field left
    out: the request runs with each default (stream true: its chunks are published)."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt, f"{base}/stream/null1")
    nulls = dict.fromkeys(("think", "stream", "sentences", "max_tokens", "images", "temperature", "stop"))
    mqtt_probe.publish(
        f"{base}/request/generate", {"id": "null1", "reply_to": rt, "prompt": "alpha beta", **nulls}
    )
    body = mqtt_probe.get(rt, timeout=20).json()
    assert body["status"] == "ok" and body["id"] == "null1", body
    assert body["data"]["text"].startswith("ALPHA BETA")
    assert mqtt_probe.get(f"{base}/stream/null1", timeout=10).json()["seq"] == 0


@pytest.mark.parametrize(
    "request_body", [{"prompt": None}, {"messages": None}, {"prompt": None, "messages": None}]
)
def test_a_needed_field_null_is_refused_naming_it(
    base: str, mqtt_probe: Probe, request_body: dict[str, Any]
) -> None:
    """prompt or messages null is not "absent, so the default": a request needs one of them."""
    rt = reply_topic()
    mqtt_probe.subscribe(rt)
    mqtt_probe.publish(f"{base}/request/generate", {**request_body, "id": "null2", "reply_to": rt})
    body = mqtt_probe.get(rt, timeout=10).json()
    assert body["code"] == "empty_prompt" and body["id"] == "null2", body
    said = " and ".join(request_body) + (" are" if len(request_body) > 1 else " is")
    assert body["error"] == f"a generate request needs a prompt or messages ({said} null)"
