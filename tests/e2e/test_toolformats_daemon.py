"""Each model family's tool-call format end to end: rkllmd as a process over real mosquitto, on the
C runtime double, its model set to the family's ``tool_format``, asked through MQTT, the OpenAI
API (the ``openai`` client) and the Ollama API (the ``ollama`` client), streamed and not.

The double answers from a script (FAKE_RKLLM_SCRIPT): to the user's question it says that
family's real call text (single, or parallel), in pieces of a few bytes, so the markup arrives
split across tokens as a model's would. What a user gets: structured ``tool_calls`` in each
interface's shape, and none of the call text in the content or the stream. One daemon per
format serves all three interfaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import final_of
from tests.e2e.toolformat_served import Served, ollama_chat, openai_chat, serve_format
from tests.helpers import Broker, Probe

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS = ("get_weather", {"city": "Paris"})
ROME = ("get_weather", {"city": "Rome"})
# What each family writes for "weather in Paris" and "weather in Paris and Rome" (the families'
# test files say where each form comes from).
SAID = {
    "pythonic": {
        "single": '[get_weather(city="Paris")]',
        "parallel": "[get_weather(city='Paris'), get_weather(city='Rome')]",
    },
    "mistral": {
        "single": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "parallel": (  # v11+: one tag per call
            '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}'
        ),
    },
    "phi4_mini": {
        "single": 'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "parallel": (
            'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_weather", "arguments": {"city": "Rome"}}]'
        ),
    },
}
# ... and a call each family's parser must refuse (a bare name where a value goes, JSON cut short).
MALFORMED = {
    "pythonic": "[get_weather(city=Paris)]",
    "mistral": '[TOOL_CALLS]get_weather[ARGS]{"city": }',
    "phi4_mini": 'functools[{"name": "get_weather", "arguments": {"city": }}]',
}
QUESTION = {
    "single": "What is the weather in Paris?",
    "parallel": "What is the weather in Rome and Paris?",
    "malformed": "What is the weather in Nowhere?",
}
EXPECTED = {"single": [PARIS], "parallel": [PARIS, ROME]}
MARKUP = ("[", "]", "functools", "TOOL_CALLS", "ARGS", "get_weather", "{")


def script(fmt: str) -> list[tuple[str, str, str]]:
    """The double's script: the parallel question's needle first (the first match is said)."""
    return [
        ("user", "Rome and Paris", SAID[fmt]["parallel"]),
        ("user", "weather in Paris", SAID[fmt]["single"]),
        ("user", "in Nowhere", MALFORMED[fmt]),
    ]


def clean(text: str) -> bool:
    return not any(m in text for m in MARKUP)


@pytest.fixture(scope="module", params=sorted(SAID))
def served(
    request: pytest.FixtureRequest,
    broker: Broker,
    fake_libs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    fmt: str = request.param
    tmp = tmp_path_factory.mktemp(f"fmt-{fmt}")
    yield from serve_format(fmt, script(fmt), tmp, broker, fake_libs["1.3"], f"fmt{fmt.replace('_', '')}")


def user(kind: str) -> list[Any]:
    return [{"role": "user", "content": QUESTION[kind]}]


def over_mqtt(served: Served, probe: Probe, kind: str) -> tuple[str, dict[str, Any]]:
    """A streamed generate request: the text its stream carried, and its final reply."""
    rid = f"{served.fmt}-{kind}"
    stream = f"{served.base}/stream/{rid}"
    probe.subscribe(stream, f"reply/{rid}")
    payload = {"id": rid, "messages": user(kind), "tools": [WEATHER]}
    probe.publish(f"{served.base}/request/generate", payload, response_topic=f"reply/{rid}")
    chunks = [m.json() for m in probe.collect_until(stream, lambda m: m.json().get("done"))]
    return "".join(c.get("delta", "") for c in chunks), final_of(probe, f"reply/{rid}")


@pytest.mark.parametrize("kind", ["single", "parallel"])
def test_mqtt_reply_has_the_calls_and_the_stream_no_markup(
    served: Served, mqtt_probe: Probe, kind: str
) -> None:
    """The model's table sets the format (it reaches the worker); the reply's tool_calls are the
    calls in order, finish_reason tool_calls; the stream and the text carry nothing of them."""
    streamed, reply = over_mqtt(served, mqtt_probe, kind)
    data = reply["data"]
    assert reply["status"] == "ok" and data["finish_reason"] == "tool_calls", reply
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in data["tool_calls"]] == EXPECTED[kind]
    assert all(c["id"].startswith("call_") for c in data["tool_calls"])
    assert data["text"].strip() == "" and streamed.strip() == ""


def test_a_malformed_call_is_invalid_output_and_never_streamed(served: Served, mqtt_probe: Probe) -> None:
    """The family's malformed call: withheld (not streamed, not the reply's text), logged, and the
    reply says no tool was called."""
    streamed, reply = over_mqtt(served, mqtt_probe, "malformed")
    assert reply["status"] == "error" and reply["code"] == "invalid_output", reply
    assert "no tool was called" in reply["error"] and reply["data"]["text"] == "" and streamed == ""
    assert "malformed tool call withheld" in served.proc.log_text()


@pytest.mark.parametrize("kind", ["single", "parallel"])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_gets_tool_calls_and_no_markup(served: Served, kind: str, stream: bool) -> None:
    content, got, finish = openai_chat(served, user(kind), [WEATHER], stream)
    assert got == EXPECTED[kind] and finish == "tool_calls"
    assert clean(content), content


@pytest.mark.parametrize("kind", ["single", "parallel"])
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_gets_tool_calls_and_no_markup(served: Served, kind: str, stream: bool) -> None:
    """As Home Assistant's client reads it: the calls in ``message.tool_calls``; nothing of them
    in ``message.content``, which HA would speak."""
    said, got = ollama_chat(served, user(kind), [WEATHER], stream)
    assert got == EXPECTED[kind]
    assert clean(said), said
