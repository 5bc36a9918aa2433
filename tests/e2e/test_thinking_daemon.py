"""A thinking model's thought, end to end: rkllmd as a process over real mosquitto on the C
runtime double, through MQTT, the OpenAI API and the Ollama API (with the pinned official
clients Home Assistant uses), streamed and not.

The double plays a thinking model: with ``[[think=B64]]`` it writes ``<think>…</think>`` before
its answer only when the run's RKLLMInput.enable_thinking is set (as Qwen3 does once its template
leaves the block open), so a thought in the reply also proves the switch reached the runtime.
``[[chunk=N]]`` cuts the output into N-byte tokens, tags included.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from rkllmd.bench.broker import free_port
from rkllmd.testing import wait_until
from tests.e2e.conftest import final_of, rkllm_config
from tests.e2e.test_ha_replay import replay
from tests.helpers import Broker, DaemonProc, Probe

BASE = "thinking"
THOUGHT = "The user wants the kitchen light on — HassTurnOn does that. Done soon."
ANSWER = "Sure. The kitchen light is on now! Anything else?"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def thinks(answer: str = ANSWER, chunk: int = 3) -> str:
    """A prompt for the double as a thinking model (it thinks only when enable_thinking is set)."""
    return f"[[think={b64(THOUGHT)}]] [[say={b64(answer)}]] [[chunk={chunk}]]"


def says(text: str, chunk: int = 3) -> str:
    return f"[[say={b64(text)}]] [[chunk={chunk}]]"


class Served:
    def __init__(self, proc: DaemonProc, openai_port: int, ollama_port: int) -> None:
        self.proc = proc
        self.ollama = f"http://127.0.0.1:{ollama_port}"
        self.openai = f"http://127.0.0.1:{openai_port}/v1"


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """rkllmd on the double (1.3.1) with both HTTP plugins, and a DeepSeek-R1-like model whose
    template opens the thought (``thinking_starts_open``)."""
    tmp = tmp_path_factory.mktemp("thinking")
    lib = fake_libs["1.3.1"]
    r1 = {"runtime": "rkllm", "path": str(tmp / "fake-model.rkllm"), "library": str(lib)}
    r1["thinking_starts_open"] = True
    plain = {k: v for k, v in r1.items() if k != "thinking_starts_open"}
    models = {
        "r1": r1,
        "r1capped": {**r1, "max_thinking_tokens": 5},
        "qwen3-1.7b": plain,  # thinks by its family's name
        "qwen3-4b-instruct-2507": plain,  # Qwen3's Instruct release has no thinking mode
        "mine": {**plain, "thinks": True},
    }
    openai_port, ollama_port = free_port(), free_port()
    cfg = rkllm_config(tmp, broker, lib, BASE, limits={"max_payload_bytes": 65536}, extra_models=models)
    with cfg.open("a") as f:
        f.write(
            f'\n[plugins]\nenabled = ["http", "ollama"]\n[plugins.http]\nport = {openai_port}\n'
            f"[plugins.ollama]\nport = {ollama_port}\n"
        )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    d.wait_log("Ollama-compatible API listening")
    yield Served(d, openai_port, ollama_port)
    assert d.stop() == 0


def generate(probe: Probe, payload: dict[str, Any]) -> dict[str, Any]:
    """A generate request over MQTT; its chunks, bare text, bare thought, sentences and reply."""
    rid = payload["id"]
    stream = f"{BASE}/stream/{rid}"
    probe.subscribe(stream, f"{stream}/text", f"{stream}/thinking", f"{stream}/sentences", f"reply/{rid}")
    probe.publish(f"{BASE}/request/generate", payload, response_topic=f"reply/{rid}")
    reply = final_of(probe, f"reply/{rid}")
    out: dict[str, Any] = {"reply": reply, "data": reply["data"]}
    if payload.get("stream", True):
        out["chunks"] = [m.json() for m in probe.collect_until(stream, lambda m: m.json().get("done"))]
        out["text"] = b"".join(
            m.payload for m in probe.collect_until(f"{stream}/text", lambda m: m.payload == b"\n")
        )
    if payload.get("sentences"):
        said = probe.collect_until(f"{stream}/sentences", lambda m: m.payload == b"")
        out["sentences"] = [m.payload.decode() for m in said[:-1]]
    return out


# --- MQTT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk", "sentences"), [(1, True), (2, False), (7, True)])
def test_mqtt_thought_apart_from_the_answer_and_never_spoken(
    served: Served, mqtt_probe: Probe, chunk: int, sentences: bool
) -> None:
    """Tags cut at every byte (chunk 1): the thought comes in the chunks' ``thinking`` and on
    /thinking, the answer in ``delta``, /text, the sentences and the reply's ``text``. Without
    sentences the chunks go out from the inference thread itself (the direct stream)."""
    rid = f"t{chunk}"
    payload = {"id": rid, "prompt": thinks(chunk=chunk), "think": True, "sentences": sentences}
    got = generate(mqtt_probe, payload)
    data = got["data"]
    assert got["reply"]["status"] == "ok" and data["finish_reason"] == "stop"
    assert (data["text"], data["thinking"]) == (ANSWER, THOUGHT)
    chunks = got["chunks"]
    assert "".join(c["delta"] for c in chunks[:-1]) == ANSWER
    assert "".join(c.get("thinking", "") for c in chunks[:-1]) == THOUGHT
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert got["text"] == ANSWER.encode() + b"\n"
    thought = mqtt_probe.collect_until(f"{BASE}/stream/{rid}/thinking", lambda m: m.payload == b"\n")
    assert b"".join(m.payload for m in thought) == THOUGHT.encode() + b"\n"
    if sentences:
        assert " ".join(got["sentences"]) == ANSWER and "HassTurnOn" not in "".join(got["sentences"])


def test_mqtt_thinking_is_off_unless_asked(served: Served, mqtt_probe: Probe) -> None:
    """The default is no thinking: enable_thinking is not set, the model answers at once, and
    nothing is published on /thinking (not even its end)."""
    got = generate(mqtt_probe, {"id": "off1", "prompt": thinks()})
    assert got["data"]["text"] == ANSWER and "thinking" not in got["data"]
    assert not any("thinking" in c for c in got["chunks"])
    assert not [m for m in mqtt_probe.drain() if m.topic.endswith("/thinking")]
    refused = generate(mqtt_probe, {"id": "off2", "prompt": "hi", "think": "very", "stream": False})
    assert refused["reply"]["code"] == "bad_request", refused["reply"]  # a wrong value, not type
    assert "think: must be true, false, 'low', 'medium' or 'high'" in refused["reply"]["error"]


def test_r1_output_starts_inside_the_thought(served: Served, mqtt_probe: Probe) -> None:
    """DeepSeek-R1-Distill's template opens <think>: its output only closes it. Even unasked (it
    always thinks), the thought is kept out of the text."""
    out = f"{THOUGHT}\n</think>\n\n{ANSWER}"
    got = generate(mqtt_probe, {"id": "r1a", "model": "r1", "prompt": says(out, 1), "stream": False})
    assert (got["data"]["text"], got["data"]["thinking"]) == (ANSWER, THOUGHT)


def test_tool_calls_come_from_the_answer_only(served: Served, mqtt_probe: Probe) -> None:
    """A call the model muses about while thinking is thought, not a call (nor a malformed one)."""
    call = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    out = f"<think>\nMaybe <tool_call>{{oops</tool_call>? No: a proper one.\n</think>\n\nChecking. {call}"
    got = generate(mqtt_probe, {"id": "tc1", "prompt": says(out, 2), "tools": [WEATHER], "think": True})
    data = got["data"]
    assert got["reply"]["status"] == "ok" and data["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in data["tool_calls"]] == ["get_weather"]
    assert (
        data["text"] == "Checking. "
        and data["thinking"] == "Maybe <tool_call>{oops</tool_call>? No: a proper one."
    )


def test_an_open_ended_thought_is_capped_and_reported(served: Served, mqtt_probe: Probe) -> None:
    """A block that never closes: with max_thinking_tokens the run stops there (thinking_limit,
    no answer); without, the output is all thought, the answer empty, and the log says so."""
    endless = "<think>\n" + "and then I wonder again " * 60
    # Tokens a few ms apart, as a board makes them: the cap counts deltas as they arrive, and a
    # host that falls behind gets several at once (docs/THINKING.md).
    prompt = says(endless, 4) + " [[delay_ms=3]]"
    got = generate(mqtt_probe, {"id": "cap1", "prompt": prompt, "think": True, "max_thinking_tokens": 10})
    data = got["data"]
    assert got["reply"]["status"] == "ok" and data["finish_reason"] == "thinking_limit"
    assert data["text"] == "" and data["thinking"].startswith("and then I wonder")
    assert len(data["thinking"]) < 80  # stopped about 10 four-byte tokens in, not 360 tokens later
    assert got["chunks"][-1]["finish_reason"] == "thinking_limit"

    got = generate(mqtt_probe, {"id": "cap2", "prompt": says("<think>never closed", 3), "stream": False})
    assert got["data"]["text"] == "" and got["data"]["thinking"] == "never closed"
    assert got["data"]["finish_reason"] == "stop"
    assert wait_until(lambda: "the model's thought never closed" in served.proc.log_text(), 5)


def test_thought_in_history_is_not_prefilled(served: Served, mqtt_probe: Probe) -> None:
    """The double echoes the prompt's words: an earlier answer's thought is not among them."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nSure thing."},
        {"role": "user", "content": "again please"},
    ]
    got = generate(mqtt_probe, {"id": "h1", "messages": messages, "stream": False})
    text = got["data"]["text"]
    assert "SURE THING." in text and "AGAIN PLEASE" in text and "SECRET" not in text


def test_a_replies_thinking_sent_back_in_the_history_is_dropped(served: Served, mqtt_probe: Probe) -> None:
    """A client that keeps the chat as rkllmd's replies gave it sends ``data.thinking`` back on the
    assistant turn: taken (it used to be bad_request, unknown field) and never prefilled."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Sure thing.", "thinking": "secret plan"},
        {"role": "user", "content": "again please"},
    ]
    got = generate(mqtt_probe, {"id": "h2", "messages": messages, "stream": False, "think": True})
    assert got["reply"]["status"] == "ok", got["reply"]
    text = got["data"]["text"]
    assert "SURE THING." in text and "AGAIN PLEASE" in text and "SECRET" not in text
    on_user = [{"role": "user", "content": "hi", "thinking": "x"}]
    refused = generate(mqtt_probe, {"id": "h3", "messages": on_user, "stream": False})
    assert refused["reply"]["code"] == "bad_request" and "assistant" in refused["reply"]["error"]


# --- OpenAI, with the openai client Home Assistant pins --------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_openai_reasoning_content(served: Served, stream: bool) -> None:
    """chat_template_kwargs.enable_thinking turns it on; the thought is ``reasoning_content``."""
    messages = [{"role": "user", "content": thinks(chunk=1)}]
    common = {"model": "fake", "messages": messages, "stream": stream}
    on = replay(
        "openai",
        "3.26.0",
        served.openai,
        **common,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert "error" not in on, on.get("error")
    if stream:
        deltas = [c["choices"][0]["delta"] for c in on["chunks"] if c["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT
        assert "".join(d.get("content") or "" for d in deltas) == ANSWER
        kinds = [
            "thought" if d.get("reasoning_content") else "text"
            for d in deltas
            if d.get("reasoning_content") or d.get("content")
        ]
        assert kinds == sorted(kinds, key=lambda k: k != "thought")  # in order: all thought, then the answer
    else:
        message = on["completion"]["choices"][0]["message"]
        assert (message["content"], message["reasoning_content"]) == (ANSWER, THOUGHT)
    off = replay("openai", "3.26.0", served.openai, **common, reasoning_effort="none")
    assert off["sent"][0]["reasoning_effort"] == "none"
    body = json.dumps(off.get("chunks") or off.get("completion"))
    assert "reasoning_content" not in body and THOUGHT not in body


@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_openai_every_effort_its_client_types_turns_thinking_on(served: Served, effort: str) -> None:
    """openai 3.26.0 types reasoning_effort as none … high, xhigh, max: the two highest were 400
    (invalid_value) though the client offers them; they mean on, as every level but none and
    minimal does."""
    messages = [{"role": "user", "content": thinks()}]
    out = replay("openai", "3.26.0", served.openai, model="fake", messages=messages, reasoning_effort=effort)
    assert out["sent"][0]["reasoning_effort"] == effort and "error" not in out, out.get("error")
    message = out["completion"]["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == (ANSWER, THOUGHT)


def test_openai_thinking_limit_is_length(served: Served) -> None:
    """A model configured with max_thinking_tokens: a longer thought ends the run; OpenAI's
    clients know ``length`` for a run that ran out of tokens."""
    out = replay(
        "openai",
        "3.26.0",
        served.openai,
        model="r1capped",
        messages=[{"role": "user", "content": says("hmm " * 100, 4) + " [[delay_ms=3]]"}],
        reasoning_effort="high",
    )
    choice = out["completion"]["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
    assert choice["message"]["reasoning_content"].startswith("hmm hmm")


def test_ollama_show_lists_thinking_for_the_models_that_think(served: Served) -> None:
    """The capability clients read to offer a think toggle (Open WebUI, Home Assistant), through
    the official ollama client this project pins (0.6.3): listed for a model whose settings say
    it thinks, whose family thinks, or that is set to; for no other."""
    assert importlib.metadata.version("ollama") == "0.6.3"
    client = ollama.Client(served.ollama)
    shown = {name: client.show(name).capabilities for name in ("r1", "r1capped", "qwen3-1.7b", "mine")}
    assert all(caps is not None and "thinking" in caps for caps in shown.values()), shown
    assert client.show("fake:latest").capabilities == ["completion", "tools"]
    assert client.show("qwen3-4b-instruct-2507").capabilities == ["completion", "tools"]


# --- Ollama, with the ollama client Home Assistant 2026.11 pins --------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_message_thinking(served: Served, stream: bool) -> None:
    """HA's call with think on: ``message.thinking`` in the parts, the content the answer; HA's
    next turn replays that thinking and the content, and neither thought is prefilled again."""
    common = {"model": "fake:latest", "stream": stream, "keep_alive": -1, "options": {"num_ctx": 8192.0}}
    user = {"role": "user", "content": thinks(chunk=2)}
    out = replay("ollama", "0.6.2", served.ollama, messages=[user], think=True, **common)
    assert out["sent"][0]["think"] is True and "error" not in out, out.get("error")
    parts = out["parts"]
    assert "".join(p["message"].get("thinking", "") for p in parts) == THOUGHT
    assert "".join(p["message"].get("content", "") for p in parts) == ANSWER
    kinds = [
        "thought" if p["message"].get("thinking") else "text"
        for p in parts
        if p["message"].get("thinking") or p["message"].get("content")
    ]
    assert kinds == sorted(kinds, key=lambda k: k != "thought")  # in order: all thought, then the answer
    assert parts[-1]["done"] and parts[-1]["done_reason"] == "stop"

    history = [
        {"role": "user", "content": "turn on the light"},
        {"role": "assistant", "content": "<think>secret</think>Done.", "thinking": "private musing"},
        {"role": "user", "content": "thanks"},
    ]
    again = replay("ollama", "0.6.2", served.ollama, messages=history, think="high", **common)
    assert again["sent"][0]["messages"][1]["thinking"] == "private musing"
    echoed = "".join(p["message"].get("content", "") for p in again["parts"])
    assert "DONE." in echoed and "SECRET" not in echoed and "MUSING" not in echoed


def test_ollama_capped_thought_is_told_not_silent(served: Served) -> None:
    """Home Assistant speaks the content: a thought stopped at its cap, with no answer, is told in a
    sentence (done_reason thinking_limit says why to a program), never read out as thought."""
    out = replay(
        "ollama",
        "0.6.2",
        served.ollama,
        model="r1capped:latest",
        messages=[{"role": "user", "content": says("hmm " * 100, 4) + " [[delay_ms=3]]"}],
        stream=True,
        think=True,
    )
    parts = out["parts"]
    said = "".join(p["message"].get("content", "") for p in parts)
    assert said.startswith("I thought about that for too long") and "hmm" not in said
    assert "".join(p["message"].get("thinking", "") for p in parts).startswith("hmm hmm")
    assert parts[-1]["done_reason"] == "thinking_limit"
