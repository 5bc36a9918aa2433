"""What Home Assistant sends, replayed with the exact client versions it pins, against rkllmd as a
process on the C runtime double (both HTTP plugins, real mosquitto).

Each client is installed once with ``pip install --target`` into
``${XDG_CACHE_HOME:-~/.cache}/rkllmd/clients/<name>-<version>`` (outside the repository) and run
in a subprocess whose PYTHONPATH is that install alone (tests/e2e/ha_replay_driver.py), calling it
as Home Assistant's code does. Read from Home Assistant's released wheels:

- 2026.11.0, homeassistant/components/ollama/entity.py (``ollama==0.6.2``, manifest.json):
  ``client.chat(model, messages, tools, stream=True, keep_alive=-1, options={"num_ctx": ...},
  think=..., format=...)``; ``num_ctx`` from a NumberSelector (``8192.0``); assistant history with
  ``tool_calls[].function.arguments`` an object; tool results as role ``tool``, content
  ``json_dumps({"data": ..., "error": ...})``; images as ``ollama.Image`` bytes on a user message.
- 2025.4.4, homeassistant/components/ollama/conversation.py (``ollama==0.4.7``): the same call
  without ``think`` and ``format``, ``keep_alive=f"{keep_alive}s"`` (``"-1s"``, or ``"-1.0s"``
  once the field was edited), tool results as ``json.dumps(tool_result)``.
- 2026.11.0, homeassistant/components/llama_cpp/api.py and entity.py (``openai==3.26.0``): the
  setup probe (``tools``, ``max_tokens=3``, then streamed), and each turn's
  ``chat.completions.create(messages, model, tools, response_format, max_tokens, top_p,
  temperature, user, stream)``, images as ``image_url`` data URIs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.testing import wait_until
from tests.e2e.conftest import start_with_both_apis
from tests.e2e.test_ollama_daemon import HA_SYSTEM, HASS_TURN_ON
from tests.helpers import Broker, DaemonProc

BASE = "hareplay"
DRIVER = Path(__file__).with_name("ha_replay_driver.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rkllmd" / "clients"
# Signs in pip's output that the index cannot be reached (then the test is skipped, saying so).
_OFFLINE = (
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Max retries exceeded",
    "No matching distribution found",
)
# A one-pixel PNG: what HA attaches to a user message for an AI task with an image.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
CALL = {"name": "HassTurnOn", "arguments": {"name": "Kitchen Light", "domain": ["light"]}}
SAY_CALL = base64.b64encode(f"<tool_call>{json.dumps(CALL)}</tool_call>".encode()).decode()
RESULT = {"data": {"success": [{"name": "Kitchen Light", "type": "entity"}], "failed": []}, "error": None}


def pinned(name: str, version: str) -> Path:
    """The pinned client's install directory, made on first use (skipped only when PyPI is
    unreachable)."""
    target = CACHE / f"{name}-{version}"
    if (target / f"{name}-{version}.dist-info").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{name}-{version}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(tmp)]
    proc = subprocess.run([*cmd, f"{name}=={version}"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        why = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        if any(sign in proc.stderr for sign in _OFFLINE):
            pytest.skip(f"cannot install {name}=={version} (PyPI unreachable?): {why}")
        pytest.fail(f"pip install {name}=={version} failed: {proc.stderr[-2000:]}")
    try:
        tmp.rename(target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def replay(client: str, version: str, url: str, method: str = "chat", **kwargs: Any) -> dict[str, Any]:
    """One call through the pinned client (ollama's ``method``: chat or generate), in a
    subprocess: what it sent and what it got back."""
    env = {**os.environ, "PYTHONPATH": str(pinned(client, version))}
    # HA's llama_cpp sends DEFAULT_API_KEY (const.py) when none is set; its ollama no key by default.
    key = "sk-0000000000000000000" if client == "openai" else ""
    spec = {"client": client, "url": url, "key": key, "kwargs": kwargs, "method": method}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "-"],
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == version  # the pinned client ran, not the virtualenv's
    return out


class Served:
    def __init__(self, proc: DaemonProc, openai_port: int, ollama_port: int) -> None:
        self.proc = proc
        self.ollama = f"http://127.0.0.1:{ollama_port}"
        self.openai = f"http://127.0.0.1:{openai_port}/v1"


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """rkllmd on the double (a 4096-token context) with both HTTP plugins in their default config."""
    tmp = tmp_path_factory.mktemp("hareplay")
    d, openai_port, ollama_port = start_with_both_apis(tmp, broker, fake_libs["1.3"], BASE)
    yield Served(d, openai_port, ollama_port)
    assert d.stop() == 0


def calls_of(parts: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (c["function"]["name"], c["function"]["arguments"])
        for p in parts
        for c in p["message"].get("tool_calls") or []
    ]


def text_of(parts: list[dict[str, Any]]) -> str:
    return "".join(p["message"].get("content") or "" for p in parts)


# --- Home Assistant 2026.11.0, Ollama integration, ollama==0.6.2 --------------------------------


def test_ha_2026_11_ollama_assist_turn_calls_a_tool_and_reads_its_result(served: Served) -> None:
    """Turn 1: HA's defaults (num_ctx 8192.0 above the model's 4096, keep_alive -1, think false)
    get the tool call back as an object; turn 2: the call and its result answered with text."""
    system = {"role": "system", "content": HA_SYSTEM}
    common: dict[str, Any] = {
        "model": "fake:latest",
        "tools": [HASS_TURN_ON],
        "stream": True,
        "keep_alive": -1,
        "options": {"num_ctx": 8192.0},
        "think": False,
        "format": None,
    }
    user = {"role": "user", "content": f"[[say={SAY_CALL}]] turn on the kitchen light"}
    first = replay("ollama", "0.6.2", served.ollama, messages=[system, user], **common)
    sent = first["sent"][0]
    assert sent["options"] == {"num_ctx": 8192.0} and isinstance(sent["options"]["num_ctx"], float)
    assert sent["keep_alive"] == -1 and sent["think"] is False and sent["stream"] is True
    assert "error" not in first, first.get("error")
    assert calls_of(first["parts"]) == [(CALL["name"], CALL["arguments"])]
    assert "tool_call" not in text_of(first["parts"]) and first["parts"][-1]["done"]

    history = [
        system,
        {"role": "user", "content": "turn on the kitchen light"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}]},
        {"role": "tool", "content": json.dumps(RESULT, separators=(",", ":"))},
    ]
    second = replay("ollama", "0.6.2", served.ollama, messages=history, **common)
    assert second["sent"][0]["messages"][2]["tool_calls"][0]["function"]["arguments"] == CALL["arguments"]
    assert "error" not in second, second.get("error")
    assert text_of(second["parts"]) and not calls_of(second["parts"]) and second["parts"][-1]["done"]


def test_ha_2026_11_ollama_structured_output(served: Served) -> None:
    """An AI task's ``format`` (a JSON schema): the answer is JSON of that schema."""
    schema = {"type": "object", "properties": {"ANSWER": {"type": "string"}}, "required": ["ANSWER"]}
    out = replay(
        "ollama",
        "0.6.2",
        served.ollama,
        model="fake:latest",
        messages=[{"role": "user", "content": '[[len=1]] {"answer":"x"}'}],
        tools=None,
        stream=True,
        keep_alive=-1,
        options={"num_ctx": 8192.0},
        think=None,
        format=schema,
    )
    assert out["sent"][0]["format"] == schema
    assert "error" not in out, out.get("error")
    assert json.loads(text_of(out["parts"])) == {"ANSWER": "X"}


def test_ha_2026_11_ollama_image_is_refused_with_a_reason(served: Served) -> None:
    """An AI task with an image sent to a model without an image encoder: HA's client hears that
    the model cannot see, and the log says why (a vision model's AI task: test_images_clients.py)."""
    out = replay(
        "ollama",
        "0.6.2",
        served.ollama,
        model="fake:latest",
        messages=[{"role": "user", "content": "what is in the picture?", "images_b64": [PNG_B64]}],
        stream=True,
        keep_alive=-1,
        options={"num_ctx": 8192.0},
        think=False,
    )
    assert out["sent"][0]["messages"][0]["images"] == [PNG_B64]
    # HA speaks the assistant's text and never catches a stream's error, so rkllmd tells its client
    # in a sentence by default (errors = "auto"); the reason itself is in rkllmd's log.
    [done] = out["parts"]
    assert (
        done["done"] and done["done_reason"] == "error" and "cannot see images" in done["message"]["content"]
    )
    assert wait_until(lambda: "does not take images" in served.proc.log_text(), 5)


# --- Home Assistant 2025.4.4, Ollama integration, ollama==0.4.7 ---------------------------------


@pytest.mark.parametrize("keep_alive", ["-1s", "-1.0s"])
def test_ha_2025_4_ollama_assist_turn(served: Served, keep_alive: str) -> None:
    """HA 2025.4.4's call: keep_alive as f"{value}s" (an int or a float setting), num_ctx 8192.0,
    tools; then its history with the call and a json.dumps'd tool result."""
    system = {"role": "system", "content": HA_SYSTEM}
    common: dict[str, Any] = {
        "model": "fake:latest",
        "tools": [HASS_TURN_ON],
        "stream": True,
        "keep_alive": keep_alive,
        "options": {"num_ctx": 8192.0},
    }
    user = {"role": "user", "content": f"[[say={SAY_CALL}]] turn on the kitchen light"}
    first = replay("ollama", "0.4.7", served.ollama, messages=[system, user], **common)
    assert first["sent"][0]["keep_alive"] == keep_alive and first["sent"][0]["options"]["num_ctx"] == 8192.0
    assert "error" not in first, first.get("error")
    assert calls_of(first["parts"]) == [(CALL["name"], CALL["arguments"])]
    history = [
        system,
        {"role": "user", "content": "turn on the kitchen light"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}]},
        {"role": "tool", "content": json.dumps(RESULT)},
    ]
    second = replay("ollama", "0.4.7", served.ollama, messages=history, **common)
    assert "error" not in second, second.get("error")
    assert text_of(second["parts"]) and second["parts"][-1]["done"]


# --- Home Assistant 2026.11.0, llama.cpp integration, openai==3.26.0 ----------------------------

TEST_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "test_function",
            "description": "Test function.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
TEST_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.mark.parametrize("stream", [False, True])
def test_ha_2026_11_llama_cpp_setup_probe(served: Served, stream: bool) -> None:
    """The config flow's check: a chat with test tools and max_tokens 3, plain then streamed."""
    out = replay(
        "openai",
        "3.26.0",
        served.openai,
        model="fake",
        messages=TEST_MESSAGES,
        tools=TEST_TOOLS,
        max_tokens=3,
        stream=stream,
    )
    assert "error" not in out, out.get("error")
    if stream:
        assert out["chunks"][0]["choices"][0]["delta"]["role"] == "assistant"
        assert out["chunks"][-1]["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert out["completion"]["choices"][0]["message"]["content"]


def test_ha_2026_11_llama_cpp_assist_turn_calls_a_tool_and_reads_its_result(served: Served) -> None:
    """A turn with HA's numbers as its number fields store them (max_tokens 3000.0, top_p 1.0,
    temperature 0.7): the call streams as tool_calls deltas; the next turn carries the call and
    its result (tool_call_id) and gets text."""
    common: dict[str, Any] = {
        "model": "fake",
        "tools": [HASS_TURN_ON],
        "max_tokens": 3000.0,
        "top_p": 1.0,
        "temperature": 0.7,
        "user": "01JQ3ZK8H8T7Y6X5W4V3U2T1S0",
        "stream": True,
    }
    system = {"role": "system", "content": HA_SYSTEM}
    user = {"role": "user", "content": f"[[say={SAY_CALL}]] turn on the kitchen light"}
    first = replay("openai", "3.26.0", served.openai, messages=[system, user], **common)
    assert first["sent"][0]["max_tokens"] == 3000.0 and isinstance(first["sent"][0]["max_tokens"], float)
    assert "error" not in first, first.get("error")
    deltas = [
        tc for c in first["chunks"] for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or []
    ]
    head = deltas[0]
    assert head["index"] == 0 and head["id"] and head["function"]["name"] == "HassTurnOn"
    args = json.loads("".join(d["function"].get("arguments") or "" for d in deltas))
    assert args == CALL["arguments"]
    assert first["chunks"][-1]["choices"][0]["finish_reason"] == "tool_calls"

    call = {
        "type": "function",
        "id": head["id"],
        "function": {"arguments": json.dumps(args, separators=(",", ":")), "name": "HassTurnOn"},
    }
    history = [
        system,
        {"role": "user", "content": "turn on the kitchen light"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": head["id"], "content": json.dumps(RESULT, separators=(",", ":"))},
    ]
    second = replay("openai", "3.26.0", served.openai, messages=history, **common)
    assert "error" not in second, second.get("error")
    text = "".join(ch["delta"].get("content") or "" for c in second["chunks"] for ch in c["choices"])
    assert text and second["chunks"][-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_ha_2026_11_llama_cpp_structured_output_and_image(served: Served) -> None:
    """response_format json_schema (strict) gets JSON of the schema; an image part, to a model
    without an image encoder, a clear 400."""
    schema = {"type": "object", "properties": {"ANSWER": {"type": "string"}}, "required": ["ANSWER"]}
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}
    out = replay(
        "openai",
        "3.26.0",
        served.openai,
        model="fake",
        messages=[{"role": "user", "content": '[[len=1]] {"answer":"x"}'}],
        response_format=rf,
        max_tokens=3000.0,
        stream=True,
    )
    assert "error" not in out, out.get("error")
    text = "".join(ch["delta"].get("content") or "" for c in out["chunks"] for ch in c["choices"])
    assert json.loads(text) == {"ANSWER": "X"}
    parts = [
        {"type": "text", "text": "what is in the picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"}},
    ]
    out = replay(
        "openai",
        "3.26.0",
        served.openai,
        model="fake",
        messages=[{"role": "user", "content": parts}],
        max_tokens=3000.0,
        stream=True,
    )
    assert (out["error"]["status_code"], out["error"]["code"]) == (400, "images_unsupported")
    assert "does not take images" in out["error"]["message"]
