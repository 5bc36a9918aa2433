"""The official ``openai`` client against rkllmd's http plugin, on real text from SmolLM2."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from rkllmd.bench.broker import free_port
from tests.helpers import Broker, DaemonProc, Probe, write_config

pytestmark = pytest.mark.model
BASE = "httpm"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def api(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """rkllmd on its embedded SmolLM2 with the http plugin (no auth) on a free loopback port."""
    tmp = tmp_path_factory.mktemp("httpm")
    port = free_port()
    cfg = write_config(
        tmp / "httpm.toml",
        {
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE, "client_id": BASE},
            "log": {"format": "json"},
            "plugins": {"enabled": ["http"], "http": {"port": port}},
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(60)
    # 180 s: a grammar-bound call on SmolLM2 took 1.3 s a token on this 2-core machine under load
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0, timeout=180)
    assert d.stop() == 0


def test_chat_completion_names_paris_with_usage(api: openai.OpenAI) -> None:
    """A non-streamed chat completion answers the question and counts prompt and completion tokens."""
    r = api.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=16, seed=1)
    assert r.object == "chat.completion" and r.model == "smollm2" and r.id.startswith("chatcmpl-")
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_completion(api: openai.OpenAI) -> None:
    """Streaming: the role first, text deltas naming Paris, a finish chunk, then the usage chunk."""
    chunks = list(
        api.chat.completions.create(
            model="smollm2",
            messages=FRANCE,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and "\ufffd" not in text
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= len([c for c in chunks[1:-2] if c.choices[0].delta.content])


def test_max_tokens_and_stop_reach_the_model(api: openai.OpenAI) -> None:
    """max_tokens ends the answer with finish_reason length; a stop string cuts it before the stop."""
    short = api.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage is not None
    assert short.usage.completion_tokens == 3
    cut = api.chat.completions.create(
        model="smollm2", messages=FRANCE, temperature=0, max_tokens=16, stop=["Paris"]
    )
    assert "Paris" not in (cut.choices[0].message.content or "")


def test_text_completion_and_models(api: openai.OpenAI) -> None:
    """/v1/completions answers a prompt as text_completion; /v1/models lists the embedded model."""
    r = api.completions.create(model="smollm2", prompt="Say hello.", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage is not None
    assert [m.id for m in api.models.list()] == ["smollm2"]


def test_http_and_mqtt_streams_at_once(api: openai.OpenAI, mqtt_probe: Probe) -> None:
    """An HTTP stream and an MQTT stream sent together are both answered whole on one model: the
    MQTT chunks add up to the MQTT reply, the HTTP deltas name Paris."""
    got: dict[str, Any] = {}

    def http() -> None:
        stream = api.chat.completions.create(
            model="smollm2", messages=FRANCE, temperature=0, max_tokens=16, stream=True
        )
        got["text"] = "".join(c.choices[0].delta.content or "" for c in stream)

    mqtt_probe.subscribe(f"{BASE}/stream/mq", "mq/reply")
    t = threading.Thread(target=http)
    t.start()
    mqtt_probe.publish(
        f"{BASE}/request/generate",
        {"id": "mq", "prompt": "Name a colour.", "max_tokens": 12, "temperature": 0},
        response_topic="mq/reply",
    )
    reply = mqtt_probe.get("mq/reply", timeout=60).json()
    t.join(60)
    chunks = [m.json() for m in mqtt_probe.drain() if m.topic == f"{BASE}/stream/mq"]
    assert reply["status"] == "ok" and reply["data"]["text"]
    assert "".join(c.get("delta", "") for c in chunks) == reply["data"]["text"]
    assert "Paris" in got["text"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
            "required": ["city"],
        },
    },
}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Rome?"}]


def test_grammar_forced_tool_call_end_to_end(api: openai.OpenAI) -> None:
    """tool_choice required: a llama.cpp grammar makes SmolLM2 write a valid call, streamed or not."""
    import json

    r = api.chat.completions.create(
        model="smollm2",
        messages=WEATHER_Q,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome", "Oslo")
    chunks = list(
        api.chat.completions.create(
            model="smollm2",
            messages=WEATHER_Q,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=80,
            stream=True,
        )
    )
    assert not "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].index == 0 and calls[0].id and calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls))["city"] in (
        "Paris",
        "Rome",
        "Oslo",
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema_response_format(api: openai.OpenAI) -> None:
    """response_format json_schema is a grammar: the answer parses and has the required fields."""
    import json

    schema = {
        "type": "object",
        "properties": {
            "capital": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
        },
        "required": ["capital", "country"],
    }
    r = api.chat.completions.create(
        model="smollm2",
        messages=FRANCE,
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content or "")
    assert isinstance(value["capital"], str) and isinstance(value["country"], str)
