"""The http plugin in rkllmd as a process, over real mosquitto, on the C runtime double.

The double makes text from the prompt's words (upper-cased, cycled) and obeys ``[[delay_ms=N]]``
and ``[[len=N]]`` in the prompt, so queue order, busy and disconnects are deterministic. The
queue holds one request behind the running one.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from rkllmd.bench.broker import free_port
from rkllmd.testing import wait_until
from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Probe

BASE = "httpf"
KEY = "sekrit-key"


class Served:
    def __init__(self, proc: DaemonProc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}/v1"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=30)

    def log(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines for ``event``, in order."""
        out = []
        for line in self.proc.log_text().splitlines():
            if f'"{event}"' in line:
                rec = json.loads(line)
                if rec.get("event") == event:
                    out.append(rec)
        return out

    def wait_event(self, event: str, request_id: str, timeout: float = 15) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.log(event) if r.get("request_id") == request_id]
            return bool(found)

        assert wait_until(seen, timeout), f"no {event!r} for {request_id} in the log"
        return found[0]

    def new_http_id(self, event: str, known: set[str], timeout: float = 15) -> str:
        """The id of an HTTP request that logged ``event`` and is not in ``known``."""
        ids: list[str] = []

        def seen() -> bool:
            ids[:] = [
                r["request_id"]
                for r in self.log(event)
                if str(r.get("request_id")).startswith("http-") and r["request_id"] not in known
            ]
            return bool(ids)

        assert wait_until(seen, timeout), f"no new HTTP request logged {event!r}"
        return ids[0]


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("httpf")
    port = free_port()
    cfg = rkllm_config(tmp, broker, fake_libs["1.3"], BASE, limits={"queue_size": 1})
    with cfg.open("a") as f:
        f.write(f'\n[plugins]\nenabled = ["http"]\n[plugins.http]\nport = {port}\napi_keys = ["{KEY}"]\n')
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    d.wait_log("OpenAI-compatible API listening")
    yield Served(d, port)
    assert d.stop() == 0


def words(text: str, n: int) -> str:
    """What the double answers for a prompt with these words, ``n`` tokens long."""
    w = text.upper().split()
    return " ".join(w[i % len(w)] for i in range(n))


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def test_http_and_mqtt_requests_share_one_queue_in_order(served: Served, mqtt_probe: Probe) -> None:
    """An HTTP stream queued behind an MQTT request, and an MQTT request queued behind it, are each
    answered whole, in queue order; nothing of the HTTP request is published over MQTT."""
    mqtt_probe.subscribe(f"{BASE}/stream/#", f"{BASE}/response/#", "qa/reply", "qc/reply")
    mqtt_probe.publish(
        f"{BASE}/request/generate",
        {"id": "qa", "prompt": "[[delay_ms=30]] [[len=12]] aa1 aa2"},
        response_topic="qa/reply",
    )
    a_first = mqtt_probe.get(f"{BASE}/stream/qa", timeout=15).json()["delta"]  # A runs

    chunks: queue.Queue[Any] = queue.Queue()

    def http_b() -> None:
        try:
            for c in served.client().chat.completions.create(
                model="fake", messages=user("[[delay_ms=30]] [[len=8]] bb1 bb2"), stream=True
            ):
                chunks.put(c)
        finally:
            chunks.put(None)

    t = threading.Thread(target=http_b)
    t.start()
    rid_b = served.new_http_id("request queued", set())  # B waits behind A
    first = chunks.get(timeout=15)  # B runs: A is done
    assert first.choices[0].delta.role == "assistant"
    mqtt_probe.publish(
        f"{BASE}/request/generate", {"id": "qc", "prompt": "[[len=4]] cc1 cc2"}, response_topic="qc/reply"
    )
    b_text, finish = "", None
    while (c := chunks.get(timeout=15)) is not None:
        b_text += c.choices[0].delta.content or ""
        finish = c.choices[0].finish_reason or finish
    t.join(5)
    a = mqtt_probe.get("qa/reply", timeout=15).json()
    c_reply = mqtt_probe.get("qc/reply", timeout=15).json()
    assert a["data"]["text"] == words("aa1 aa2", 12) and c_reply["data"]["text"] == words("cc1 cc2", 4)
    assert b_text == words("bb1 bb2", 8) and finish == "stop"
    done = [r["request_id"] for r in served.log("request done")]
    assert [i for i in done if i in ("qa", rid_b, "qc")] == ["qa", rid_b, "qc"]
    seen = mqtt_probe.drain()
    a_stream = "".join(m.json().get("delta", "") for m in seen if m.topic == f"{BASE}/stream/qa")
    assert a_first + a_stream == a["data"]["text"]  # the first chunk (a token or more) was read above
    assert not [m for m in seen if "http-" in m.topic or b"http-" in m.payload]


def test_full_queue_is_503_with_retry_after(served: Served, mqtt_probe: Probe) -> None:
    """With one request running and one queued, an HTTP request is refused 503 with Retry-After."""
    mqtt_probe.subscribe(f"{BASE}/stream/busy1", "busy1/reply")
    mqtt_probe.publish(
        f"{BASE}/request/generate",
        {"id": "busy1", "prompt": "[[delay_ms=50]] [[len=400]] long"},
        response_topic="busy1/reply",
    )
    mqtt_probe.get(f"{BASE}/stream/busy1", timeout=15)
    known = {r["request_id"] for r in served.log("request queued")}
    queued: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: queued.update(
            r=served.client().chat.completions.create(model="fake", messages=user("[[len=3]] q1"))
        )
    )
    t.start()
    served.new_http_id("request queued", known)
    with pytest.raises(openai.InternalServerError) as exc:
        served.client().chat.completions.create(model="fake", messages=user("[[len=3]] q2"))
    assert exc.value.status_code == 503 and exc.value.response.headers["Retry-After"] == "2"
    assert exc.value.code == "busy"
    mqtt_probe.publish(f"{BASE}/request/cancel", "busy1", response_topic="busy1/cancel")  # as its owner
    assert mqtt_probe.get("busy1/reply", timeout=15).json()["data"]["finish_reason"] == "cancelled"
    t.join(15)
    assert queued["r"].choices[0].message.content == "Q1 Q1 Q1"


def post_raw(port: int, body: dict[str, Any]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return s


def test_client_disconnect_cancels_its_generation(served: Served) -> None:
    """A streaming client that hangs up mid-answer, and a waiting non-streaming one, have their
    generations cancelled; rkllmd then serves the next request."""
    s = post_raw(
        served.port, {"model": "fake", "messages": user("[[delay_ms=50]] [[len=400]] w"), "stream": True}
    )
    got = b""
    while b'"content":"W"' not in got:
        got += s.recv(4096)
    head = got.split(b"\r\n\r\n")[0].decode()
    rid = next(ln.split(": ")[1] for ln in head.splitlines() if ln.lower().startswith("x-request-id"))
    s.close()
    done = served.wait_event("request done", rid)
    assert done["finish_reason"] == "cancelled" and done["tokens"] < 400

    known = {r["request_id"] for r in served.log("request queued")}
    s = post_raw(served.port, {"model": "fake", "messages": user("[[delay_ms=50]] [[len=400]] v")})
    rid = served.new_http_id("request queued", known)
    s.close()
    assert served.wait_event("request done", rid)["finish_reason"] == "cancelled"
    after = served.client().chat.completions.create(model="fake", messages=user("[[len=2]] next"))
    assert after.choices[0].message.content == "NEXT NEXT"


def test_auth_and_error_paths_through_the_daemon(served: Served) -> None:
    """Missing, wrong and right keys; bad JSON, a wrong type, an unknown model, a body over the
    limit, and a prompt rkllmd itself refuses: each its OpenAI error and status code."""
    with pytest.raises(urllib.error.HTTPError) as missing:  # the official client insists on a key
        urllib.request.urlopen(f"{served.url}/models", timeout=30)
    assert missing.value.code == 401 and json.load(missing.value)["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").models.list()
    assert [m.id for m in served.client().models.list()] == ["fake", "other"]
    c = served.client()
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wt:
        c.chat.completions.create(model="fake", messages=user("x"), max_tokens="ten")  # type: ignore[arg-type]
    assert wt.value.code == "invalid_type" and wt.value.param == "max_tokens"
    with pytest.raises(
        openai.BadRequestError
    ) as ep:  # refused by rkllmd's validation, after the queue's door
        c.chat.completions.create(
            model="fake", messages=[{"role": "system", "content": "only a system turn"}]
        )
    assert ep.value.code == "empty_prompt"
    with pytest.raises(openai.APIStatusError) as big:
        c.chat.completions.create(model="fake", messages=user("x" * 5000))
    assert big.value.status_code == 413
    # the official client cannot send broken JSON; curl can
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{not json",
            f"{served.url}/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "400" and json.loads(body)["error"]["code"] == "bad_json"


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is not installed (scripts/setup.sh installs it)"
)
def test_curl_streams_raw_server_sent_events(served: Served) -> None:
    """`curl -N` sees OpenAI's SSE: the role first, the content, a finish chunk, then [DONE]; and
    /health answers 200 with JSON."""
    body = {"model": "fake", "messages": user("[[len=3]] hi there"), "stream": True}
    out = subprocess.run(
        [
            "curl",
            "-sN",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            f"{served.url}/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = [ln for ln in out.stdout.split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "HI THERE HI"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    health = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{served.port}/health"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text, status = health.stdout.rsplit("\n", 1)
    assert status == "200" and json.loads(text)["mqtt_connected"] is True


def test_openai_tool_use_over_two_turns_on_the_double(served: Served) -> None:
    """The openai client: a streamed call split across tokens arrives as tool_calls deltas with index
    and id; the result sent back as role tool is answered in text (non-streamed)."""
    import base64
    import json

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    say = f"[[say={base64.b64encode(call.encode()).decode()}]] [[chunk=2]]"
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    chunks = list(
        served.client().chat.completions.create(model="fake", messages=user(say), tools=[tool], stream=True)
    )
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    head = deltas[0]
    assert head.index == 0 and head.id and head.id.startswith("call_") and head.function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages = [
        *user("weather in Oslo?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": head.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": head.id, "content": "snow"},
    ]
    r = served.client().chat.completions.create(model="fake", messages=messages, tools=[tool])
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert (r.choices[0].message.content or "").endswith("<TOOL_RESPONSE> SNOW </TOOL_RESPONSE>")
    bad = [*messages[:2], {"role": "tool", "tool_call_id": "nope", "content": "snow"}]
    with pytest.raises(openai.BadRequestError, match="matches no earlier tool call"):
        served.client().chat.completions.create(model="fake", messages=bad, tools=[tool])


def test_stream_sends_each_delta_as_it_is_generated(served: Served, broker: Broker) -> None:
    """The first words reach the client while the model still writes (the run can still be cancelled),
    which Home Assistant's OpenAI-compatible agents need to stream an answer into text-to-speech."""
    known = {r["request_id"] for r in served.log("request queued")}
    # 20 s of tokens: only the cancel ends it, however long the way from the first chunk to the
    # cancel (the log, a new MQTT client, the broker) takes on a busy machine.
    stream = served.client().chat.completions.create(
        model="fake", messages=user("[[len=400]] [[delay_ms=50]] kk1"), stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    assert next(chunks).choices[0].delta.content == "KK1"
    rid = served.new_http_id("request queued", known)
    probe = Probe(broker)
    try:
        probe.publish(f"{BASE}/request/cancel", rid)
    finally:
        probe.close()
    rest = list(chunks)
    said = "KK1" + "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert 0 < len(said.split()) < 400
    assert rest[-1].choices[0].finish_reason == "stop"
