"""A malformed tool call never reaches the user as markup: rkllmd as a process over real mosquitto,
on the C runtime double (which has no grammar, as RKLLM has none), through every way out: the MQTT
stream, the final reply, the sentences for text-to-speech, the official ``ollama`` client (as
Home Assistant uses it) and the official ``openai`` client.

The double's [[say=BASE64]] directive emits exact text in pieces of [[chunk=N]] bytes, so the
markup arrives split across tokens. What the user gets instead: the text before the call, then
``invalid_output`` saying the call was not well formed and nothing was called (docs/TOOLS.md),
which the ollama plugin turns into a sentence for Home Assistant's client.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from rkllmd.bench.broker import free_port
from tests.e2e.conftest import final_of, rkllm_config
from tests.helpers import Broker, DaemonProc, Probe

BASE = "badcallf"
KEY = "bad-call-key"
TURN_ON = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on/opens/presses a device or entity.",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": []},
    },
}
BEFORE = "Sure, I can do that. Turning it on now. "
GOOD = '<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}\n</tool_call>'
# What small models write instead (the first two as SmolLM2 writes them for HA's prompt, unconstrained).
MALFORMED = {
    "json": (
        '<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}, {"description": "x"}}'
        "\n</tool_call>"
    ),
    "unterminated": '<tool_call>\n{"name": "HassTurnOn", "arguments": {\n    "type": "function"\n}}, {"desc',
    "reopened": '<tool_call>\n{"name": "f", <tool_call>\n{"name": "HassTurnOn", "arguments": </tool_call>',
}


def say(text: str, chunk: int = 3) -> str:
    return f"[[say={base64.b64encode(text.encode()).decode()}]] [[chunk={chunk}]]"


def no_markup(text: str) -> bool:
    return "tool_call" not in text and "<" not in text and '"name"' not in text


class Served:
    def __init__(self, proc: DaemonProc, ollama_port: int, http_port: int) -> None:
        self.proc = proc
        self.ollama_host = f"127.0.0.1:{ollama_port}"
        self.ollama = ollama.Client(
            host=f"http://127.0.0.1:{ollama_port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )
        self.openai = openai.OpenAI(
            base_url=f"http://127.0.0.1:{http_port}/v1", api_key=KEY, max_retries=0, timeout=30
        )


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("badcall")
    oport, hport = free_port(), free_port()
    cfg = rkllm_config(tmp, broker, fake_libs["1.3"], BASE, limits={"max_payload_bytes": 65536})
    with cfg.open("a") as f:
        f.write(
            f'\n[plugins]\nenabled = ["ollama", "http"]\n'
            f'[plugins.ollama]\nport = {oport}\napi_keys = ["{KEY}"]\n'
            f'[plugins.http]\nport = {hport}\napi_keys = ["{KEY}"]\n'
        )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)  # the request topics are subscribed
    d.wait_log("Ollama-compatible API listening")
    d.wait_log("OpenAI-compatible API listening")
    yield Served(d, oport, hport)
    assert d.stop() == 0


def over_mqtt(probe: Probe, rid: str, said: str) -> tuple[str, list[str], dict[str, Any]]:
    """A streamed request with sentences: the streamed text, the sentences, the final reply."""
    stream, sentences = f"{BASE}/stream/{rid}", f"{BASE}/stream/{rid}/sentences"
    probe.subscribe(stream, sentences, f"reply/{rid}")
    payload = {"id": rid, "prompt": say(said), "tools": [TURN_ON], "sentences": True}
    probe.publish(f"{BASE}/request/generate", payload, response_topic=f"reply/{rid}")
    chunks = [m.json() for m in probe.collect_until(stream, lambda m: m.json().get("done"))]
    spoken = [m.payload.decode() for m in probe.collect_until(sentences, lambda m: m.payload == b"")]
    return "".join(c.get("delta", "") for c in chunks), spoken, final_of(probe, f"reply/{rid}")


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_mqtt_stream_sentences_and_reply_carry_no_markup(
    served: Served, mqtt_probe: Probe, kind: str
) -> None:
    """The text before the call streams and its whole sentences are spoken (a failed run's last,
    unfinished sentence is not: rkllmd/dispatch.py); the call is not; the reply is invalid_output."""
    streamed, spoken, reply = over_mqtt(mqtt_probe, f"bad-{kind}", BEFORE + MALFORMED[kind])
    assert reply["status"] == "error" and reply["code"] == "invalid_output", reply
    assert "not well formed" in reply["error"] and "no tool was called" in reply["error"]
    assert reply["data"]["text"] == BEFORE and streamed == BEFORE
    assert [s.strip() for s in spoken if s.strip()] == ["Sure, I can do that."]


def test_a_malformed_call_next_to_a_good_one_is_dropped(served: Served, mqtt_probe: Probe) -> None:
    """A well-formed call still acts; the malformed one beside it is left out, not spoken."""
    streamed, spoken, reply = over_mqtt(mqtt_probe, "bad-mixed", BEFORE + MALFORMED["json"] + GOOD)
    data = reply["data"]
    assert reply["status"] == "ok" and data["finish_reason"] == "tool_calls", reply
    assert [c["function"] for c in data["tool_calls"]] == [
        {"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}
    ]
    assert data["text"] == streamed == BEFORE and all(no_markup(s) for s in spoken)


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_client_hears_a_sentence_not_markup(served: Served, stream: bool) -> None:
    """Home Assistant's client: what it speaks (the assistant's content) is the text before the call
    and then the ollama plugin's sentence for invalid_output, never the markup; the last part says
    done_reason "error" (rkllmd/plugins/builtin/_spoken.py, errors = "auto")."""
    messages = [{"role": "user", "content": say(BEFORE + MALFORMED["unterminated"]) + " turn on the light"}]
    if stream:
        parts = list(served.ollama.chat(model="fake", messages=messages, tools=[TURN_ON], stream=True))
    else:
        parts = [served.ollama.chat(model="fake", messages=messages, tools=[TURN_ON], stream=False)]
    said = "".join(p.message.content or "" for p in parts)
    assert no_markup(said) and not any(p.message.tool_calls for p in parts)
    assert (
        said.endswith("did not have the required form. Please try again.")
        and parts[-1].done_reason == "error"
    )
    if stream:
        assert said.startswith(BEFORE)


@pytest.mark.parametrize("stream", [True, False])
def test_openai_client_gets_an_error_not_markup(served: Served, stream: bool) -> None:
    """The OpenAI client: the streamed content holds no markup, and the answer is an APIError."""
    messages: Any = [{"role": "user", "content": say(BEFORE + MALFORMED["json"])}]
    content: list[str] = []
    with pytest.raises(openai.APIError) as err:
        if stream:
            for chunk in served.openai.chat.completions.create(
                model="fake", messages=messages, tools=[TURN_ON], stream=True
            ):
                content.extend(c.delta.content or "" for c in chunk.choices)
        else:
            served.openai.chat.completions.create(model="fake", messages=messages, tools=[TURN_ON])
    assert "not well formed" in json.dumps(err.value.body) + str(err.value)
    assert no_markup("".join(content))


# --- a field of several shapes given none of them ------------------------------------------------

CALLED = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}


def test_a_union_field_of_no_shape_is_one_sentence_over_mqtt(served: Served, mqtt_probe: Probe) -> None:
    """``stop`` and a tool call's ``arguments`` each take two shapes: a value of neither is one
    sentence naming the field and both, not pydantic's error per member of the union."""
    mqtt_probe.subscribe("reply/u1", "reply/u2")
    mqtt_probe.publish(
        f"{BASE}/request/generate", {"id": "u1", "prompt": "x", "stop": 5}, response_topic="reply/u1"
    )
    body = final_of(mqtt_probe, "reply/u1")
    assert body["code"] == "wrong_type", body
    assert body["error"] == "invalid request: stop: must be a string or a list of strings (got 5)"
    call = {**CALLED, "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": 5}}]}
    messages = [{"role": "user", "content": "on"}, call, {"role": "tool", "content": "ok"}]
    mqtt_probe.publish(
        f"{BASE}/request/generate", {"id": "u2", "messages": messages}, response_topic="reply/u2"
    )
    body = final_of(mqtt_probe, "reply/u2")
    assert body["code"] == "wrong_type", body
    assert body["error"] == (
        "invalid request: messages[1].tool_calls[0].function.arguments: "
        "must be a JSON object or a string holding one (got 5)"
    )


def test_a_union_field_of_no_shape_is_one_sentence_over_http(served: Served) -> None:
    """The same through both HTTP APIs: OpenAI's ``stop`` and a history's tool call ``arguments``
    (the official client), Ollama's ``options.stop`` (raw: the ollama client drops a stop that is
    not a list before sending)."""
    with pytest.raises(openai.BadRequestError) as err:
        stop: Any = 5
        served.openai.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}], stop=stop
        )
    assert err.value.body == {
        "message": "Invalid type for 'stop': expected a string or an array of strings, "
        "but got an integer instead.",
        "type": "invalid_request_error",
        "param": "stop",
        "code": "invalid_type",
    }
    fn = {"name": "HassTurnOn", "arguments": 5}
    history: Any = [
        {"role": "user", "content": "on"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": fn}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        served.openai.chat.completions.create(model="fake", messages=history)
    message = err.value.body["message"]  # type: ignore[index]
    assert message.endswith(
        "messages[1].tool_calls[0].function.arguments: must be a JSON object or a string holding one (got 5)"
    ), message
    assert ".dict[" not in message and ".str:" not in message
    body = json.dumps(
        {"model": "fake", "messages": [{"role": "user", "content": "x"}], "options": {"stop": 5}}
    )
    conn = http.client.HTTPConnection(served.ollama_host, timeout=30)
    conn.request("POST", "/api/chat", body, {"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 400
    assert json.loads(resp.read()) == {
        "error": "invalid type for options.stop: expected a string or an array of strings (got 5)"
    }


def test_a_call_to_a_tool_not_offered_comes_back_as_a_call(served: Served, mqtt_probe: Probe) -> None:
    """RKLLM has no grammar (the double neither): a well-formed call to a name outside ``tools``
    is a tool call like any other, left to the client to answer (docs/TOOLS.md, "A call to a tool
    that was not offered"; Home Assistant answers it with a "not found" tool result)."""
    other = '<tool_call>\n{"name": "HassTurnOff", "arguments": {"name": "Kitchen Light"}}\n</tool_call>'
    _, _, reply = over_mqtt(mqtt_probe, "n1", BEFORE + other)
    assert reply["status"] == "ok" and reply["data"]["finish_reason"] == "tool_calls", reply
    [call] = reply["data"]["tool_calls"]
    assert call["function"] == {"name": "HassTurnOff", "arguments": {"name": "Kitchen Light"}}
