"""Numbers on every interface of rkllmd as a process (both HTTP plugins and MQTT, real mosquitto,
the C runtime double): non-finite numbers are refused in each interface's shape and logged, never
left unanswered; whole-number floats are served as the integers they are.

Before the fix ``{"temperature": 1e999}`` on either HTTP API was never answered: the plugin read
it as ``inf``, re-encoded it as ``Infinity``, ingress refused that with no address the plugin's
relay could match, and the handler waited forever. Every request here has a client timeout, so a
request left unanswered fails its test within seconds instead of hanging the suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.testing import wait_until
from tests.e2e.conftest import start_with_both_apis
from tests.helpers import Broker, DaemonProc, Probe, post_json

BASE = "numf"
NON_FINITE = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"]
TIMEOUT_S = 5.0  # an answer to a refused body takes milliseconds; longer is a hang
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "[[len=2]] aa1"}]}

# Every numeric field each API reads (docs/HTTP.md, docs/HOMEASSISTANT.md, docs/PROTOCOL.md).
OPENAI_FIELDS = [
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "top_logprobs",  # a field rkllmd ignores is refused too when not finite: the body is not JSON
]
# A number inside a tool's schema (Home Assistant's HassLightSet has brightness 0-100).
TOOL = {
    "type": "function",
    "function": {
        "name": "HassLightSet",
        "parameters": {"type": "object", "properties": {"brightness": {"type": "integer", "maximum": 100}}},
    },
}
TOOL_MAXIMUM: list[str | int] = ["tools", 0, "function", "parameters", "properties", "brightness", "maximum"]
OLLAMA_OPTIONS = [
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "num_predict",
    "num_ctx",
    "min_p",  # options rkllmd ignores are refused too when not finite: the body is not JSON
    "num_thread",
]
MQTT_FIELDS = [
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
]


class Served:
    def __init__(self, proc: DaemonProc, openai_port: int, ollama_port: int) -> None:
        self.proc, self.openai_port, self.ollama_port = proc, openai_port, ollama_port

    def post(self, port: int, path: str, body: bytes) -> tuple[int, Any]:
        """POST ``body``; its status and JSON answer, or a failed test when none comes in time."""
        return post_json(port, path, body, TIMEOUT_S)


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("numf")
    d, openai_port, ollama_port = start_with_both_apis(tmp, broker, fake_libs["1.3"], BASE)
    yield Served(d, openai_port, ollama_port)
    assert d.stop() == 0


def with_number(body: dict[str, Any], path: list[str | int], literal: str) -> bytes:
    """``body`` as JSON text with the number at ``path`` written as ``literal`` (1e999, NaN, ...)."""
    obj = json.loads(json.dumps(body))
    cur = obj
    for key in path[:-1]:
        cur = cur[key] if isinstance(key, int) or key in cur else cur.setdefault(key, {})
    cur[path[-1]] = "@NUMBER@"
    return json.dumps(obj).replace('"@NUMBER@"', literal).encode()


@pytest.mark.parametrize("field", [*OPENAI_FIELDS, "tools"])
def test_openai_api_refuses_non_finite_numbers(served: Served, field: str) -> None:
    """Both endpoints, each non-finite number: 400 bad_json in OpenAI's error shape, logged."""
    bodies = {"/v1/chat/completions": CHAT, "/v1/completions": {"model": "fake", "prompt": "aa1"}}
    if field == "tools":
        bodies = {"/v1/chat/completions": {**CHAT, "tools": [TOOL]}}
    where: list[str | int] = TOOL_MAXIMUM if field == "tools" else [field]
    for path, body in bodies.items():
        for literal in NON_FINITE:
            status, answer = served.post(served.openai_port, path, with_number(body, where, literal))
            assert status == 400, (path, literal, answer)
            assert (
                answer["error"]["code"] == "bad_json" and "finite numbers only" in answer["error"]["message"]
            )
    assert wait_until(lambda: '"http request refused"' in served.proc.log_text(), 5)


@pytest.mark.parametrize("field", [*OLLAMA_OPTIONS, "keep_alive", "tools"])
def test_ollama_api_refuses_non_finite_numbers(served: Served, field: str) -> None:
    """/api/chat and /api/generate, each non-finite number: 400 ``{"error": ...}``, logged."""
    path_of: list[str | int] = [field] if field == "keep_alive" else ["options", field]
    bodies = {"/api/chat": CHAT, "/api/generate": {"model": "fake", "prompt": "aa1"}}
    if field == "tools":
        path_of, bodies = TOOL_MAXIMUM, {"/api/chat": {**CHAT, "tools": [TOOL]}}
    for path, body in bodies.items():
        for literal in NON_FINITE:
            status, answer = served.post(served.ollama_port, path, with_number(body, path_of, literal))
            assert status == 400, (path, literal, answer)
            assert set(answer) == {"error"} and "finite numbers only" in answer["error"]
    assert wait_until(lambda: '"ollama request refused"' in served.proc.log_text(), 5)


def test_mqtt_refuses_non_finite_numbers(served: Served, broker: Broker) -> None:
    """Each numeric field of a generate request (and a tool schema's number), each non-finite
    number: bad_json to its reply_to."""
    probe = Probe(broker)
    try:
        probe.subscribe("numf-client/#")
        wheres: list[list[str | int]] = [[field] for field in MQTT_FIELDS] + [TOOL_MAXIMUM]
        for where in wheres:
            for i, literal in enumerate(NON_FINITE):
                rid = f"nf-{where[0]}-{i}"
                body: dict[str, Any] = {"id": rid, "prompt": "aa1", "reply_to": f"numf-client/{rid}"}
                if where[0] == "tools":
                    body["tools"] = [TOOL]
                probe.publish(f"{BASE}/request/generate", with_number(body, where, literal))
                reply = json.loads(probe.get(f"numf-client/{rid}", timeout=TIMEOUT_S).payload)
                assert reply["status"] == "error" and reply["code"] == "bad_json" and reply["id"] == rid
                assert "finite numbers only" in reply["error"]
    finally:
        probe.close()


def test_every_connection_is_given_back_after_the_refusals(served: Served) -> None:
    """More refused requests than the 32 connection slots, then an ordinary request is served: no
    refused request holds a slot (they once did, forever)."""
    for i in range(40):
        body = with_number(CHAT, ["temperature"], NON_FINITE[i % len(NON_FINITE)])
        assert served.post(served.openai_port, "/v1/chat/completions", body)[0] == 400
        assert (
            served.post(served.ollama_port, "/api/chat", with_number(CHAT, ["options", "top_k"], "1e999"))[0]
            == 400
        )
    status, answer = served.post(served.openai_port, "/v1/chat/completions", json.dumps(CHAT).encode())
    assert status == 200 and answer["choices"][0]["message"]["content"] == "AA1 AA1"
    status, answer = served.post(
        served.ollama_port, "/api/chat", json.dumps({**CHAT, "stream": False}).encode()
    )
    assert status == 200 and answer["message"]["content"] == "AA1 AA1"


def test_whole_floats_are_served_as_integers_on_every_interface(served: Served, broker: Broker) -> None:
    """max_tokens 2.0, seed 1.0, top_k 40.0 (OpenAI), num_predict 2.0 and num_ctx 8192.0 (Ollama, as
    Home Assistant sends it: served with the model's 4096, logged), max_tokens 2.0 (MQTT)."""
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": "[[len=9]] bb1"}],
        "max_tokens": 2.0,
        "seed": 1.0,
        "top_k": 40.0,
    }
    status, answer = served.post(served.openai_port, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200 and answer["choices"][0]["message"]["content"] == "BB1 BB1"
    assert answer["choices"][0]["finish_reason"] == "length"
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "[[len=9]] cc1"}],
        "stream": False,
        "options": {"num_predict": 2.0, "num_ctx": 8192.0, "top_k": 40.0},
    }
    status, answer = served.post(served.ollama_port, "/api/chat", json.dumps(body).encode())
    assert status == 200 and answer["message"]["content"] == "CC1 CC1" and answer["done_reason"] == "length"
    assert wait_until(lambda: "serving with the model's context" in served.proc.log_text(), 5)
    probe = Probe(broker)
    try:
        probe.subscribe("numf-client/#")
        payload = {
            "id": "wf-1",
            "prompt": "[[len=9]] dd1",
            "max_tokens": 2.0,
            "top_k": 40.0,
            "reply_to": "numf-client/wf",
        }
        probe.publish(f"{BASE}/request/generate", payload)
        reply = json.loads(probe.get("numf-client/wf", timeout=20).payload)
        assert reply["status"] == "ok" and reply["data"]["text"] == "DD1 DD1"
    finally:
        probe.close()
