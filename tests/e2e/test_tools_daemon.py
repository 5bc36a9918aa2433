"""Tool calling end to end: rkllmd as a process over real mosquitto, on the C runtime double.

The double's [[say=BASE64]] directive makes it emit exact text in small pieces, so the model's
<tool_call> markup arrives split across tokens, deterministically.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.e2e.conftest import Start, final_of
from tests.helpers import Probe

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def say(text: str, chunk: int = 2) -> str:
    return f"[[say={base64.b64encode(text.encode()).decode()}]] [[chunk={chunk}]]"


def ask(probe: Probe, base: str, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Publish a generate request; its stream chunks and final reply."""
    rid = payload["id"]
    probe.subscribe(f"{base}/stream/{rid}", f"reply/{rid}")
    probe.publish(f"{base}/request/generate", payload, response_topic=f"reply/{rid}")
    chunks = [m.json() for m in probe.collect_until(f"{base}/stream/{rid}", lambda m: m.json().get("done"))]
    return chunks, final_of(probe, f"reply/{rid}")


def refused(probe: Probe, base: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish a request that is refused at admission (no stream); its error reply."""
    rid = payload["id"]
    probe.subscribe(f"reply/{rid}")
    probe.publish(f"{base}/request/generate", payload, response_topic=f"reply/{rid}")
    return final_of(probe, f"reply/{rid}")


@pytest.mark.parametrize("abi", ["1.2", "1.3", "1.3.1"])
def test_tool_call_then_result_over_mqtt(start_daemon: Start, mqtt_probe: Probe, abi: str) -> None:
    """A call split across tokens becomes tool_calls; the result goes back and the model answers."""
    _d, base = start_daemon(abi)
    chunks, reply = ask(
        mqtt_probe, base, {"id": "c1", "prompt": say("Checking. " + CALL), "tools": [WEATHER]}
    )
    data = reply["data"]
    assert reply["status"] == "ok" and data["finish_reason"] == "tool_calls"
    assert data["text"] == "Checking. "
    call = data["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert call["id"].startswith("call_") and call["type"] == "function"
    streamed = "".join(c.get("delta", "") for c in chunks)
    assert streamed == "Checking. " and chunks[-1]["finish_reason"] == "tool_calls"

    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny and warm"},
    ]
    _, reply = ask(mqtt_probe, base, {"id": "c2", "messages": messages, "tools": [WEATHER]})
    data = reply["data"]
    assert reply["status"] == "ok" and data["finish_reason"] == "stop" and data["tool_calls"] == []
    # after the transcript of the call, the result is a <tool_response> block in a user turn
    assert data["text"].endswith("<TOOL_RESPONSE> SUNNY AND WARM </TOOL_RESPONSE>")


def test_malformed_call_and_bad_input_are_answered(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A malformed call is invalid_output with its markup withheld; bad tools, an unmatched result
    and non-JSON output under format get clear errors."""
    _d, base = start_daemon()
    bad_call = "<tool_call>{oops}</tool_call>"
    _, reply = ask(mqtt_probe, base, {"id": "m1", "prompt": say(bad_call), "tools": [WEATHER]})
    assert reply["code"] == "invalid_output" and "not well formed" in reply["error"]
    assert reply["data"]["text"] == ""

    reply = refused(mqtt_probe, base, {"id": "m2", "prompt": "x", "tools": [WEATHER, {"name": "f"}]})
    assert reply["code"] == "bad_request" and "tools[1]" in reply["error"]

    msgs = [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "zz", "content": "r"}]
    reply = refused(mqtt_probe, base, {"id": "m3", "messages": msgs})
    assert reply["code"] == "bad_request" and "'zz' matches no earlier tool call" in reply["error"]

    _, reply = ask(mqtt_probe, base, {"id": "m4", "prompt": "not json at all", "format": "json"})
    assert reply["code"] == "invalid_output" and reply["data"]["text"] == "NOT JSON AT ALL"
    _, reply = ask(
        mqtt_probe,
        base,
        {"id": "m5", "prompt": say('{"city": "Paris"}'), "format": WEATHER["function"]["parameters"]},
    )
    assert reply["status"] == "ok" and reply["data"]["text"] == '{"city": "Paris"}'


def test_a_model_set_to_llama_json_has_its_calls_parsed_in_that_format(
    start_daemon: Start, mqtt_probe: Probe
) -> None:
    """``tool_format = "llama3_json"`` reaches the job through the worker process: a Llama JSON
    call split across tokens becomes tool_calls, and Hermes markup is that model's text."""
    _d, base = start_daemon(model={"tool_format": "llama3_json"})
    llama_call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    chunks, reply = ask(mqtt_probe, base, {"id": "l1", "prompt": say(llama_call), "tools": [WEATHER]})
    data = reply["data"]
    assert reply["status"] == "ok" and data["finish_reason"] == "tool_calls" and data["text"] == ""
    assert data["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert "".join(c.get("delta", "") for c in chunks) == ""
    _, reply = ask(mqtt_probe, base, {"id": "l2", "prompt": say("ok " + CALL), "tools": [WEATHER]})
    assert (
        reply["status"] == "ok"
        and reply["data"]["text"] == "ok " + CALL
        and reply["data"]["tool_calls"] == []
    )
