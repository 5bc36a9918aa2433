"""The ollama plugin in rkllmd as a process, over real mosquitto, on the C runtime double, driven by
the official ``ollama`` Python client (the one Home Assistant's integration uses).

The double makes text from the prompt's words (upper-cased, cycled) and obeys ``[[len=N]]`` and
``[[delay_ms=N]]`` in the prompt.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from rkllmd.bench.broker import free_port
from rkllmd.testing import wait_until
from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Probe

BASE = "ollamaf"
KEY = "ollama-test-key"

# Home Assistant's intent tool as its ollama integration formats it (probatio.to_openapi of HassTurnOn).
HASS_TURN_ON = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on/opens/presses a device or entity.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "area": {"type": "string"},
                "floor": {"type": "string"},
                "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch", "fan"]}},
                "device_class": {"type": "array", "items": {"type": "string", "enum": ["outlet", "switch"]}},
            },
            "required": [],
        },
    },
}
HA_SYSTEM = (
    "You are a voice assistant for Home Assistant. Answer questions about the world truthfully. "
    "An overview of the areas and the devices in this smart home:\n"
    "- names: Kitchen Light\n  domain: light\n  state: 'off'\n  areas: Kitchen\n"
)


class Served:
    def __init__(self, proc: DaemonProc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = KEY) -> ollama.Client:
        return ollama.Client(host=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def loaded(self) -> list[str]:
        return [str(m.model) for m in self.client().ps().models]


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ollamaf")
    port = free_port()
    cfg = rkllm_config(tmp, broker, fake_libs["1.3"], BASE, limits={"max_payload_bytes": 65536})
    with cfg.open("a") as f:
        # errors = "ollama": these tests check Ollama's error statuses, which the ollama client gets by
        # default only from Ollama itself (rkllmd tells it in a sentence: test_ollama_spoken_errors.py)
        f.write(
            f'\n[plugins]\nenabled = ["ollama"]\n[plugins.ollama]\nport = {port}\napi_keys = ["{KEY}"]\n'
            'errors = "ollama"\n'
        )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    d.wait_log("Ollama-compatible API listening")
    yield Served(d, port)
    assert d.stop() == 0


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def queued_ids(proc: DaemonProc) -> list[str]:
    """The request ids the daemon logged as queued, in order."""
    lines = [json.loads(line) for line in proc.log_text().splitlines() if '"request queued"' in line]
    return [str(r["request_id"]) for r in lines if r.get("event") == "request queued"]


def new_queued_id(proc: DaemonProc, known: set[str], timeout: float = 15.0) -> str:
    """The id of a request queued since ``known`` was read: the log line is written by the ingress
    thread after the queue took the request, so it may come after the request's first tokens."""
    deadline = time.monotonic() + timeout
    while not (fresh := [i for i in queued_ids(proc) if i not in known]):
        assert time.monotonic() < deadline, "no new request queued"
        time.sleep(0.05)
    return fresh[0]


def test_version_tags_ps_show(served: Served) -> None:
    """The listing endpoints answer in the client's types, configured names carrying ``:latest``."""
    c = served.client()
    assert c.list().models[0].model == "fake:latest"
    assert {m.model for m in c.list().models} == {"fake:latest", "other:latest"}
    assert wait_until(lambda: served.loaded() == ["fake:latest"], 10)
    shown = c.show("fake:latest")
    assert shown.modelinfo is not None and shown.modelinfo["rkllm.context_length"] == 4096
    assert c.show("fake").details is not None
    req = urllib.request.Request(f"{served.url}/api/version", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["version"]
    with urllib.request.urlopen(served.url, timeout=5) as r:  # the root probe needs no key
        assert r.read() == b"Ollama is running"


def test_chat_streaming_and_not(served: Served) -> None:
    """A chat streams NDJSON parts and a done line with Ollama's counts and durations, or answers whole."""
    c = served.client()
    parts = list(c.chat(model="fake:latest", messages=user("[[len=6]] aa1 aa2"), stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.message.content or "" for p in parts)
    assert "AA1" in text
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == 6
    assert (last.total_duration or 0) > 0 and (last.eval_duration or 0) > 0
    whole = c.chat(model="fake", messages=user("[[len=4]] bb1"), stream=False)
    assert whole.done and whole.message.content == "BB1 BB1 BB1 BB1"
    assert whole.eval_count == 4


def test_generate_streaming_and_not(served: Served) -> None:
    """/api/generate answers in ``response``, streamed or whole; num_predict caps it at length."""
    c = served.client()
    text = "".join(p.response for p in c.generate(model="fake", prompt="[[len=3]] cc1", stream=True))
    assert text == "CC1 CC1 CC1"
    capped = c.generate(model="fake", prompt="[[len=9]] dd1", options={"num_predict": 2})
    assert capped.response == "DD1 DD1" and capped.done_reason == "length"


def test_pull_and_delete(served: Served) -> None:
    """Pull succeeds for a configured name without downloading; unknown names and delete are errors."""
    c = served.client()
    assert c.pull("fake:latest").status == "success"
    assert [p.status for p in c.pull("fake", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as err:
        c.pull("llama3.2:latest")
    assert err.value.status_code == 404 and "not configured in rkllmd" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        c.delete("fake")
    assert err.value.status_code == 400 and "does not delete" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        c.delete("nope")
    assert err.value.status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"model": "llama3.2:latest"}, 404, "not found"),
        (
            {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
            400,
            "does not take images",  # a model without an image encoder (tests/e2e/test_images_clients.py)
        ),
        ({"options": {"num_ctx": 4096.5}}, 400, "options.num_ctx: expected an integer"),
        ({"keep_alive": "soon"}, 400, "keep_alive"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, 400, "tools[0].function.name"),
        ({"format": {"type": 5}}, 400, "format.type"),
    ],
)
def test_bad_input_is_an_ollama_error(
    served: Served, kwargs: dict[str, Any], status: int, words: str
) -> None:
    """Unknown model, images, a fractional num_ctx, a bad keep_alive, tools or schema: an Ollama
    error with its status, and a log line."""
    request: dict[str, Any] = {"model": "fake", "messages": user("hello"), "stream": True, **kwargs}
    with pytest.raises(ollama.ResponseError) as err:
        list(served.client().chat(**request))
    assert err.value.status_code == status and words in err.value.error
    assert wait_until(lambda: words in served.proc.log_text(), 5)


def test_client_gone_cancels_the_generation(served: Served) -> None:
    """A client that closes a stream mid-way has its generation cancelled (rkllmd logs it)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    body = {"model": "fake", "messages": user("[[delay_ms=50]] [[len=200]] ii1")}
    conn.request("POST", "/api/chat", json.dumps(body), {"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.readline())["message"]["content"] == "II1"
    conn.close()
    assert wait_until(lambda: "generation cancelled" in served.proc.log_text(), 10)


def test_refused_request_with_an_unread_body_keeps_the_next_request_apart(served: Served) -> None:
    """An endpoint refused before its body is read closes the connection; a new one is served."""
    auth = {"Authorization": f"Bearer {KEY}"}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("POST", "/api/create", json.dumps({"model": "fake", "from": "x"}), auth)
    resp = conn.getresponse()
    assert resp.status == 501 and "not supported" in json.loads(resp.read())["error"]
    assert resp.getheader("Connection") == "close"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/api/tags", headers=auth)
    assert conn.getresponse().status == 200
    conn.close()


def test_wrong_key_is_401(served: Served) -> None:
    """A wrong bearer key is 401, which Home Assistant takes as 'reauthenticate'."""
    with pytest.raises(ollama.ResponseError) as err:
        served.client("wrong").list()
    assert err.value.status_code == 401


def test_keep_alive_zero_unloads_after_the_answer(served: Served) -> None:
    """keep_alive 0 answers, then unloads the model; the next request loads it again."""
    c = served.client()
    assert c.chat(model="fake", messages=user("[[len=2]] ee1"), keep_alive=0).message.content == "EE1 EE1"
    assert wait_until(lambda: served.loaded() == [], 10)
    assert c.chat(model="fake", messages=user("[[len=1]] ff1"), keep_alive=-1).message.content == "FF1"
    assert served.loaded() == ["fake:latest"]
    assert c.generate(model="fake", keep_alive=0).done_reason == "unload"
    assert served.loaded() == []
    assert c.generate(model="fake").done_reason == "load"
    assert served.loaded() == ["fake:latest"]


def test_home_assistant_shaped_chat_without_tools(served: Served) -> None:
    """HA's request shape: a long system prompt, think, keep_alive -1 and num_ctx within the context."""
    messages = [{"role": "system", "content": HA_SYSTEM}, *user("[[len=3]] gg1")]
    parts = list(
        served.client().chat(
            model="fake:latest",
            messages=messages,
            stream=True,
            keep_alive=-1,
            options={"num_ctx": 4096},
            think=True,
        )
    )
    assert parts[-1].done and "GG1" in "".join(p.message.content or "" for p in parts)


def test_home_assistant_shaped_chat_with_tools(served: Served) -> None:
    """HA's intent tools, keep_alive "-1" and num_ctx reach rkllmd; a text answer streams as content."""
    parts = list(
        served.client().chat(
            model="fake:latest",
            messages=[{"role": "system", "content": HA_SYSTEM}, *user("[[len=3]] hh1")],
            tools=[HASS_TURN_ON],
            stream=True,
            keep_alive="-1",
            options={"num_ctx": 4096},
        )
    )
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert not any(p.message.tool_calls for p in parts)


def test_format_schema_is_checked(served: Served) -> None:
    """A format schema (HA's AI tasks): JSON output passes, other output is a clear error."""
    schema = {"type": "object", "properties": {"ANSWER": {"type": "string"}}, "required": ["ANSWER"]}
    c = served.client()
    ok = c.chat(model="fake", messages=user('[[len=1]] {"answer":"x"}'), format=schema, stream=False)
    assert json.loads(ok.message.content or "") == {"ANSWER": "X"}
    with pytest.raises(ollama.ResponseError) as err:
        list(c.chat(model="fake", messages=user("[[len=2]] not json"), format=schema, stream=True))
    assert "not valid JSON" in err.value.error


def test_tool_call_comes_back_as_message_tool_calls(served: Served) -> None:
    """A streamed chat with HA's tools returns the model's Hermes call as message.tool_calls, and the
    call's result sent back as a tool turn gets a text answer."""
    call = json.dumps({"name": "HassTurnOn", "arguments": {"name": "Kitchen Light", "domain": ["light"]}})
    said = base64.b64encode(f"<tool_call>{call}</tool_call>".encode()).decode()
    c = served.client()
    messages = [{"role": "system", "content": HA_SYSTEM}, *user(f"[[say={said}]] turn on the kitchen light")]
    parts = list(c.chat(model="fake:latest", messages=messages, tools=[HASS_TURN_ON], stream=True))
    text = "".join(p.message.content or "" for p in parts)
    calls = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert "tool_call" not in text and parts[-1].done and parts[-1].done_reason == "stop"
    assert [(tc.function.name, dict(tc.function.arguments)) for tc in calls] == [
        ("HassTurnOn", {"name": "Kitchen Light", "domain": ["light"]})
    ]
    # Home Assistant's next turn: the call as it sent it (no id) and its result as a tool message
    # (the first turn without the directive: the double reads directives anywhere in the prompt).
    messages = [messages[0], *user("turn on the kitchen light")]
    messages += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}}],
        },
        {"role": "tool", "content": '{"data": {"success": [{"name": "Kitchen Light"}]}, "error": null}'},
        *user("[[len=2]] done1"),
    ]
    answer = c.chat(model="fake:latest", messages=messages, tools=[HASS_TURN_ON], stream=False)
    assert answer.message.content and not answer.message.tool_calls


def test_stream_sends_each_delta_as_it_is_generated(served: Served, broker: Broker) -> None:
    """The first words reach the client while the model still writes (the run can still be cancelled),
    which Home Assistant needs to stream an answer into text-to-speech."""
    known = set(queued_ids(served.proc))
    # 20 s of tokens: only the cancel ends it, however long the way from the first part to the
    # cancel (the log, a new MQTT client, the broker) takes on a busy machine.
    parts = iter(
        served.client().chat(model="fake", messages=user("[[len=400]] [[delay_ms=50]] jj1"), stream=True)
    )
    first = next(parts)
    assert not first.done and first.message.content == "JJ1"
    rid = new_queued_id(served.proc, known)
    probe = Probe(broker)
    try:
        probe.publish(f"{BASE}/request/cancel", rid)
    finally:
        probe.close()
    rest = list(parts)
    assert rest[-1].done and not any(p.done for p in rest[:-1])
    said = (first.message.content or "") + "".join(p.message.content or "" for p in rest)
    assert 0 < len(said.split()) < 400


def test_home_assistants_default_num_ctx_is_served_with_the_models_context(served: Served) -> None:
    """By default HA's num_ctx of 8192 (8192.0 from its number field) is served with the model's 4096,
    and rkllmd logs it."""
    for num_ctx in (8192, 8192.0):
        reply = served.client().chat(
            model="fake", messages=user("[[len=2]] kk1"), options={"num_ctx": num_ctx}
        )
        assert reply.message.content == "KK1 KK1" and reply.done
    assert wait_until(lambda: "serving with the model's context" in served.proc.log_text(), 5)


def test_num_ctx_refuse_refuses_a_num_ctx_above_the_models_context(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """With num_ctx = "refuse", a num_ctx above the model's context is a 400 that says both numbers."""
    port = free_port()
    cfg = rkllm_config(tmp_path, broker, fake_libs["1.3"], f"{BASE}refuse")
    with cfg.open("a") as f:
        # errors = "ollama": the refusal is checked as Ollama's status (the ollama client otherwise
        # hears it as a sentence: test_ollama_spoken_errors.py)
        f.write(
            f'\n[plugins]\nenabled = ["ollama"]\n[plugins.ollama]\nport = {port}\nnum_ctx = "refuse"\n'
            'errors = "ollama"\n'
        )
    d = DaemonProc(cfg, tmp_path)
    try:
        d.wait_log("Ollama-compatible API listening")
        client = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=30)
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model="fake", messages=user("hello there"), options={"num_ctx": 8192.0})
        assert err.value.status_code == 400
        assert "num_ctx 8192 is above the context length of model 'fake' (4096)" in err.value.error
        assert client.chat(model="fake", messages=user("[[len=1]] ll1"), options={"num_ctx": 4096.0}).done
    finally:
        assert d.stop() == 0
