"""Gemma 3, Gemma 4 and Qwen3-Coder calls end to end: rkllmd as a process on the C runtime double
(real mosquitto, both HTTP plugins), a model set to each format, its calls asked for over MQTT,
the OpenAI API (the ``openai`` client) and the Ollama API (the ``ollama`` client), streamed and not.

The double says each family's call text from ``FAKE_RKLLM_SCRIPT`` (a request's needle picks the
text), in pieces of ``[[chunk=N]]`` bytes: one byte at a time for the parallel calls, so every
tag is split at every position it can be. What must come out: the calls as structured
``tool_calls`` (arguments typed), the text before them as the content, and no call markup in any
content, stream chunk or final text. One daemon per format serves all three interfaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import final_of
from tests.e2e.toolformat_served import Call, Served, ollama_chat, openai_chat, serve_format
from tests.helpers import Broker, Probe
from tests.toolformat_helpers import TOOLS

BEFORE = "Let me check.\n"
PARIS = ("get_weather", {"city": "Paris", "days": 2})
KITCHEN = ("HassTurnOn", {"name": "Kitchen Light"})
# What each family writes: a call after a sentence, and two calls.
SAID = {
    "gemma3": {
        "single": BEFORE + '```tool_code\nprint(get_weather(city="Paris", days=2))\n```',
        "parallel": '```tool_code\nget_weather(city="Paris", days=2)\nHassTurnOn(name="Kitchen Light")\n```',
        "malformed": BEFORE + "```tool_code\nget_weather(city=paris)\n```",
    },
    "gemma4": {
        "single": BEFORE + '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>',
        "parallel": (
            '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>'
            '<|tool_call>call:HassTurnOn{name:<|"|>Kitchen Light<|"|>}<tool_call|>'
        ),
        "malformed": BEFORE + "<|tool_call>call:get_weather{city:Paris}<tool_call|>",
    },
    "qwen3_coder": {
        "single": BEFORE
        + "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        + "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
        "parallel": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=HassTurnOn>\n<parameter=name>\nKitchen Light\n</parameter>\n"
        "</function>\n</tool_call>",
        "malformed": BEFORE + "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n"
        "</tool_call>",
    },
}
EXPECTED = {"single": (BEFORE, [PARIS]), "parallel": ("", [PARIS, KITCHEN])}
CHUNK = {"single": 3, "parallel": 1}
MARKUP = ("tool_code", "<|", "|>", "<tool_call", "<function", "<parameter", "```", "get_weather(")


@pytest.fixture(scope="module", params=sorted(SAID))
def served(
    request: pytest.FixtureRequest,
    broker: Broker,
    fake_libs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """rkllmd with the model set to one format, its script saying that family's calls."""
    fmt: str = request.param
    lines = [("*", f"{fmt}-{kind}", text) for kind, text in SAID[fmt].items()]
    tmp = tmp_path_factory.mktemp(f"tf-{fmt}")
    for served in serve_format(fmt, lines, tmp, broker, fake_libs["1.3"], f"tf{fmt.replace('_', '')}"):
        assert f'"format": "{fmt}"' in served.proc.log_text()  # the tool_format line at load
        yield served


def ask_text(served: Served, kind: str) -> str:
    """The user's message: the needle that picks the family's text, and the piece size."""
    return f"[[chunk={CHUNK[kind]}]] weather {served.fmt}-{kind} please"


def no_markup(text: str) -> bool:
    return not any(m in text for m in MARKUP)


def over_mqtt(served: Served, kind: str, stream: bool) -> tuple[str, list[Call], str]:
    probe = Probe(served.broker)
    try:
        rid = f"{served.fmt}-{kind}-{int(stream)}"
        probe.subscribe(f"{served.base}/stream/{rid}", f"reply/{rid}")
        payload = {"id": rid, "prompt": ask_text(served, kind), "tools": TOOLS, "stream": stream}
        probe.publish(f"{served.base}/request/generate", payload, response_topic=f"reply/{rid}")
        streamed = ""
        if stream:
            chunks = probe.collect_until(f"{served.base}/stream/{rid}", lambda m: m.json().get("done"))
            streamed = "".join(m.json().get("delta", "") for m in chunks)
        reply = final_of(probe, f"reply/{rid}")
    finally:
        probe.close()
    assert reply["status"] == "ok", reply
    data = reply["data"]
    assert data["finish_reason"] == "tool_calls" and (not stream or streamed == data["text"])
    got = [(c["function"]["name"], c["function"]["arguments"]) for c in data["tool_calls"]]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in data["tool_calls"])
    return data["text"], got, streamed


def over_openai(served: Served, kind: str, stream: bool) -> tuple[str, list[Call], str]:
    messages: Any = [{"role": "user", "content": ask_text(served, kind)}]
    content, got, finish = openai_chat(served, messages, TOOLS, stream)
    assert finish == "tool_calls"
    return content, got, content if stream else ""


def over_ollama(served: Served, kind: str, stream: bool) -> tuple[str, list[Call], str]:
    content, got = ollama_chat(served, [{"role": "user", "content": ask_text(served, kind)}], TOOLS, stream)
    return content, got, content if stream else ""


WAYS = {"mqtt": over_mqtt, "openai": over_openai, "ollama": over_ollama}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("kind", ["single", "parallel"])
@pytest.mark.parametrize("way", sorted(WAYS))
def test_calls_come_out_structured_and_never_as_text(
    served: Served, way: str, kind: str, stream: bool
) -> None:
    """The family's call text split across tokens becomes ``tool_calls`` with typed arguments,
    in order; the content is the text before the calls, and no markup is in it or its stream."""
    content, got, streamed = WAYS[way](served, kind, stream)
    before, expected = EXPECTED[kind]
    assert got == expected
    # whitespace between blocks is the model's text, as with Hermes (a newline between calls)
    assert content.strip() == before.strip() and no_markup(streamed)


def test_a_malformed_call_is_invalid_output_and_never_streamed(served: Served) -> None:
    """The family's call gone wrong: the text before it streams, the markup does not, and the
    reply says no tool was called."""
    probe = Probe(served.broker)
    try:
        rid = f"{served.fmt}-bad"
        probe.subscribe(f"{served.base}/stream/{rid}", f"reply/{rid}")
        payload = {"id": rid, "prompt": f"[[chunk=2]] {served.fmt}-malformed", "tools": TOOLS}
        probe.publish(f"{served.base}/request/generate", payload, response_topic=f"reply/{rid}")
        chunks = probe.collect_until(f"{served.base}/stream/{rid}", lambda m: m.json().get("done"))
        reply = final_of(probe, f"reply/{rid}")
    finally:
        probe.close()
    assert reply["code"] == "invalid_output" and "not well formed" in reply["error"]
    assert reply["data"]["text"] == BEFORE == "".join(m.json().get("delta", "") for m in chunks)
    assert "malformed tool call withheld" in served.proc.log_text()
