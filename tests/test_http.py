"""The http plugin on the testing kit: real HTTP on loopback, the test playing rkllmd's part.

Each test starts the plugin on a free 127.0.0.1 port; a request it injects is read back from the
fake services and answered through the real router chain, as the dispatcher thread would.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from rkllmd.bench.broker import free_port
from rkllmd.plugins import Exchange, Final, LocalMessage
from rkllmd.settings import Settings
from rkllmd.testing import PluginHarness, wait_until

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def served(config: dict[str, Any] | None = None, **kw: Any) -> Iterator[tuple[PluginHarness, int]]:
    port = free_port()
    with PluginHarness("http", {"port": port, **(config or {})}, **kw) as h:
        assert h.state == "running", h.status()
        yield h, port


def injected(h: PluginHarness, n: int = 1) -> Exchange:
    """The ``n``-th request the plugin injected, as the daemon's ingress would have accepted it."""
    assert wait_until(lambda: len(h.services.injected) >= n, 5), "nothing injected"
    msg = h.services.injected[n - 1]
    assert isinstance(msg, LocalMessage) and msg.topic == "rkllmd/request/generate"
    return h.local_request(msg)


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, data, headers or {})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def error_of(raw: bytes) -> dict[str, Any]:
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


def events(raw: bytes) -> list[Any]:
    """The ``data:`` payloads of an SSE body; ``[DONE]`` stays a string."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
def bg() -> Iterator[Callable[..., Future[Any]]]:
    """Run a client call in the background while the test answers for rkllmd."""
    with ThreadPoolExecutor(4) as pool:
        yield pool.submit


def client(port: int, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=kw.pop("api_key", "none"),
        max_retries=0,
        timeout=10,
        **kw,
    )


# --- the OpenAI formats, with the official client ----------------------------------------------


def test_streamed_chat_follows_openai_chunk_format(bg: Callable[..., Future[Any]]) -> None:
    """A streamed chat is role chunk, content chunks, a finish chunk, a usage chunk, [DONE]."""
    with served() as (h, port):
        fut = bg(
            lambda: list(
                client(port).chat.completions.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        )
        req = injected(h)
        h.stream(req, ["Hel", "lo"])
        h.finish(req, "Hello", finish_reason="length")
        chunks = fut.result(10)
    assert [c.object for c in chunks] == ["chat.completion.chunk"] * 5
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["Hel", "lo"]
    assert [c.choices[0].finish_reason for c in chunks[:4]] == [None, None, None, "length"]
    assert chunks[4].choices == [] and chunks[4].usage is not None and chunks[4].usage.completion_tokens == 1
    assert all(c.model == "smollm2" and c.usage is None for c in chunks[:4])


def test_non_streaming_chat_passes_sampling_and_ignores_unknown_fields(
    bg: Callable[..., Future[Any]],
) -> None:
    """stop, max_completion_tokens, temperature, top_p, seed and tools reach rkllmd; unknown
    fields are dropped; the answer is a chat.completion with usage."""
    with served() as (h, port):
        fut = bg(
            client(port).chat.completions.create,
            model="smollm2",
            messages=[
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            stop=["\n"],
            max_completion_tokens=7,
            max_tokens=99,
            temperature=0,
            top_p=0.5,
            seed=3,
            user="someone",
            extra_body={"tools": [{"type": "function", "function": {"name": "f"}}], "frobnicate": 1},
        )
        req = injected(h)
        h.finish(
            req,
            "Paris.",
            data={
                "model": "smollm2",
                "text": "Paris.",
                "finish_reason": "cancelled",
                "usage": {"prompt_tokens": 9, "completion_tokens": 2},
            },
        )
        done = fut.result(10)
    p = req.payload
    assert p["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a\nb"}]
    assert (p["stop"], p["max_tokens"], p["temperature"], p["top_p"], p["seed"]) == (["\n"], 7, 0, 0.5, 3)
    assert p["stream"] is False and not {"user", "frobnicate"} & set(p)
    assert p["tools"] == [{"type": "function", "function": {"name": "f"}}]
    h.generate_input(req)  # rkllmd's own validation accepts what the plugin sends
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.choices[0].message.content == "Paris." and done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"  # cancelled: OpenAI has no such reason
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.total_tokens) == (9, 11)


def test_completions_stream_and_echo(bg: Callable[..., Future[Any]]) -> None:
    """/v1/completions: text_completion chunks (echo first), and a non-streamed answer with usage."""
    with served() as (h, port):
        body = {"model": "smollm2", "prompt": ["Once"], "echo": True, "stream": True, "max_tokens": 4}
        fut = bg(call, port, "POST", "/v1/completions", body)
        req = injected(h)
        assert req.payload["prompt"] == "Once" and req.payload["max_tokens"] == 4
        h.stream(req, [" upon"])
        h.finish(req, " upon")
        status, headers, raw = fut.result(10)
        evs = events(raw)
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert headers["X-Request-Id"] == req.id
        assert [e["choices"][0]["text"] for e in evs[:-1]] == ["Once", " upon", ""]
        assert {e["object"] for e in evs[:-1]} == {"text_completion"} and evs[0]["id"].startswith("cmpl-")
        assert evs[-2]["choices"][0]["finish_reason"] == "stop" and evs[-1] == "[DONE]"
        fut2 = bg(client(port).completions.create, model="smollm2", prompt="Once")
        req2 = injected(h, 2)
        h.finish(req2, " upon a time")
        done = fut2.result(10)
    assert done.object == "text_completion" and done.choices[0].text == " upon a time"
    assert done.usage is not None and done.usage.completion_tokens == 3


def test_models_and_aliases(bg: Callable[..., Future[Any]]) -> None:
    """/v1/models lists the configured models; an alias (or "*") maps a client's name onto one."""
    with served({"aliases": {"gpt-4o-mini": "smollm2", "*": "smollm2"}}) as (h, port):
        c = client(port)
        assert [m.id for m in c.models.list()] == ["smollm2"]
        assert c.models.retrieve("smollm2").owned_by == "rkllmd"
        fut = bg(c.chat.completions.create, model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        req = injected(h)
        h.finish(req, "ok")
        assert req.payload["model"] == "smollm2" and fut.result(10).model == "smollm2"
        status, _, _ = call(port, "GET", "/v1/models/nope")
        assert status == 404


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "max_tokens": "ten"}, "max_tokens"),
        ({**CHAT, "temperature": True}, "temperature"),
        ({**CHAT, "seed": 1.5}, "seed"),
        ({**CHAT, "stop": [1]}, "stop"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({**CHAT, "model": 5}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ],
)
def test_wrong_types_are_400_invalid_type_naming_the_field(body: dict[str, Any], param: str) -> None:
    """A field of the wrong JSON type is a 400 invalid_request_error with code invalid_type."""
    with served() as (h, port):
        status, _, raw = call(port, "POST", "/v1/chat/completions", body)
        assert status == 400 and h.services.injected == []
    err = error_of(raw)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_type", param)


def test_request_errors_before_the_queue() -> None:
    """Bad JSON, a missing field, n>1, image parts, an unknown model, URL or method, a body too
    large or without a length: each its OpenAI error, and nothing reaches rkllmd."""
    with served({"max_body_bytes": 200}) as (h, port):
        cases = [
            ("POST", "/v1/chat/completions", b"{nope", 400, "bad_json"),
            ("POST", "/v1/chat/completions", b"[1]", 400, "bad_json"),
            ("POST", "/v1/chat/completions", {"model": "smollm2"}, 400, "missing_required_parameter"),
            ("POST", "/v1/completions", {"prompt": [1, 2]}, 400, "invalid_value"),
            ("POST", "/v1/chat/completions", {**CHAT, "n": 2}, 400, "invalid_value"),
            (
                "POST",
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                400,
                "invalid_value",
            ),
            ("POST", "/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model_not_found"),
            ("POST", "/v1/images/generations", CHAT, 404, "unknown_url"),
            ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
            ("POST", "/v1/chat/completions", {**CHAT, "x": "y" * 300}, 413, "payload_too_large"),
        ]
        for method, path, body, want, code in cases:
            status, _, raw = call(port, method, path, body)
            assert (status, error_of(raw)["code"]) == (want, code), (path, body)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 411")
        assert h.services.injected == []


def read_until_closed(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    return got


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/v1/images/generations", 404, "unknown_url"),
        ("PUT", "/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/health", 405, "method_not_allowed"),
        ("POST", "/nowhere", 404, "unknown_url"),
    ],
)
def test_refused_request_with_an_unread_body_closes_the_connection(
    method: str, path: str, status: int, code: str
) -> None:
    """A request refused before its body is read is answered once, then its connection is closed,
    so the unread body is never taken for a next request; a bodiless one keeps its connection."""
    body = json.dumps(CHAT).encode()
    second = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    with served() as (h, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            s.sendall(head.encode() + body + second)
            got = read_until_closed(s)
        assert got.count(b"HTTP/1.1 ") == 1, got
        head_raw, _, raw = got.partition(b"\r\n\r\n")
        assert head_raw.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in head_raw
        assert error_of(raw)["code"] == code

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(method, path)  # Content-Length: 0
        r = conn.getresponse()
        assert r.status == status and not r.will_close
        r.read()
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        assert r.status == 200 and [m["id"] for m in json.loads(r.read())["data"]] == ["smollm2"]
        conn.close()
        assert h.services.injected == []


@pytest.mark.parametrize(
    ("code", "status", "oa_code"),
    [
        ("busy", 503, "busy"),
        ("context_exceeded", 400, "context_length_exceeded"),
        ("empty_prompt", 400, "empty_prompt"),
        ("bad_request", 400, "invalid_value"),
        ("payload_too_large", 413, "payload_too_large"),
        ("runtime_crashed", 500, "runtime_crashed"),
        ("model_load_failed", 503, "model_load_failed"),
        ("shutdown", 503, "shutdown"),
    ],
)
def test_rkllmd_errors_become_status_codes(
    bg: Callable[..., Future[Any]], code: str, status: int, oa_code: str
) -> None:
    """An error reply from rkllmd (queue full, context too long, a crash ...) is answered with its
    status code, before any stream starts; busy comes with Retry-After."""
    with served({"retry_after_s": 7}) as (h, port):
        fut = bg(call, port, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
        h.finish(injected(h), status="error", code=code, error=f"it went {code}")
        got, headers, raw = fut.result(10)
    err = error_of(raw)
    assert (got, err["code"], err["message"]) == (status, oa_code, f"it went {code}")
    assert (headers.get("Retry-After") == "7") == (code in ("busy", "shutdown"))
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")


def test_failure_after_the_first_token_is_an_error_event(bg: Callable[..., Future[Any]]) -> None:
    """A run that fails part-way ends its stream with an error event (no [DONE]): the official
    client raises it."""

    def consume() -> list[str]:
        got = []
        for c in client(port).chat.completions.create(**CHAT, stream=True):
            got.append(c.choices[0].delta.content or "")
        return got

    with served() as (h, port):
        fut = bg(consume)
        req = injected(h)
        h.stream(req, ["a"])
        h.finish(req, status="error", code="timeout", error="no new token for 60 s")
        with pytest.raises(openai.APIError, match="no new token"):
            fut.result(10)


# --- auth, health, limits, lifecycle ---------------------------------------------------------------


def test_auth_missing_wrong_and_right_key(tmp_path: Path) -> None:
    """With keys set (config and file), /v1 needs one as a bearer token; /health stays open."""
    keys = tmp_path / "keys"
    keys.write_text("# http keys\nfile-key\n\n")
    keys.chmod(0o600)
    with served({"api_keys": ["conf-key"], "api_key_file": str(keys)}) as (_, port):
        for headers, want in [
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
            ({"Authorization": "Basic conf-key"}, 401),
            ({"Authorization": "Bearer conf-key"}, 200),
            ({"Authorization": "Bearer file-key"}, 200),
        ]:
            status, h, raw = call(port, "GET", "/v1/models", headers=headers)
            assert status == want, headers
            if want == 401:
                assert h["WWW-Authenticate"].startswith("Bearer")
                assert error_of(raw)["code"] in ("missing_api_key", "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            client(port, api_key="wrong").models.list()
        assert [m.id for m in client(port, api_key="file-key").models.list()] == ["smollm2"]
        assert call(port, "GET", "/health")[0] == 200


@pytest.mark.parametrize("content", [None, "# only a comment\n"])
def test_a_key_file_that_gives_no_key_fails_closed(tmp_path: Path, content: str | None) -> None:
    """An unreadable or empty key file disables the plugin instead of serving without auth."""
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
        keys.chmod(0o600)
    with PluginHarness("http", {"port": free_port(), "api_key_file": str(keys)}) as h:
        assert h.state == "failed" and "api_key_file" in h.status()["error"]


def test_a_key_file_every_user_may_read_fails_closed(tmp_path: Path) -> None:
    """A key file open to every user disables the plugin (its status says why), as ssh refuses a
    key others can read; the keys themselves are never in the message."""
    keys = tmp_path / "keys"
    keys.write_text("visible-key\n")
    keys.chmod(0o644)
    with PluginHarness("http", {"port": free_port(), "api_key_file": str(keys)}) as h:
        error = h.status()["error"]
        assert h.state == "failed" and "0644" in error and "chmod o-rwx" in error
        assert "visible-key" not in error


def test_health_reports_connection_and_model() -> None:
    """/health is 200 when connected with a loadable model; 503 with the reason otherwise."""
    npu = Settings.model_validate(
        {"default_model": "npu", "models": {"npu": {"runtime": "rkllm", "path": "/nonexistent/m.rkllm"}}}
    )
    with served() as (h, port):
        status, _, raw = call(port, "GET", "/health")
        assert status == 200 and json.loads(raw)["status"] == "ok"
        h.services.current_stats["connected"] = False
        status, _, raw = call(port, "GET", "/health")
        assert status == 503 and json.loads(raw)["mqtt_connected"] is False
    with served(settings=npu) as (h, port):
        h.services.current_stats["loaded_model"] = None
        status, _, raw = call(port, "GET", "/health")
        body = json.loads(raw)
        assert status == 503 and body["model_loadable"] is False and "does not exist" in body["problems"][0]


def test_connections_over_the_cap_get_503() -> None:
    """Past max_connections, with every connection serving a request, a new one is answered 503
    at once (an idle connection would have given up its place instead)."""
    with served({"max_connections": 1}) as (h, port):
        held = raw_request(port, CHAT)  # waits for rkllmd's answer: its connection is in use
        req = injected(h)
        status, headers, raw = call(port, "GET", "/health")
        h.finish(req, "done")
        got = b""
        while b'"done"' not in got and (chunk := held.recv(4096)):
            got += chunk
        held.close()
        assert b"200 OK" in got
    assert status == 503 and headers["Retry-After"] == "1" and error_of(raw)["code"] == "busy"


def test_teardown_answers_waiting_clients(bg: Callable[..., Future[Any]]) -> None:
    """A client still waiting when rkllmd stops gets 503 shutdown, not a hang."""
    h = PluginHarness("http", {"port": (port := free_port())}).start()
    fut = bg(call, port, "POST", "/v1/chat/completions", CHAT)
    injected(h)
    h.stop()
    status, _, raw = fut.result(10)
    assert status == 503 and error_of(raw)["code"] == "shutdown"


def test_an_mqtt_request_reusing_the_id_is_not_taken_for_ours(bg: Callable[..., Future[Any]]) -> None:
    """Only events of the request the plugin injected (its transaction nonce) reach its client."""
    with served() as (h, port):
        fut = bg(call, port, "POST", "/v1/chat/completions", CHAT)
        req = injected(h)
        stranger = h.request({"id": req.id, "prompt": "x"})
        stranger.id = req.id
        h.host.route(Final(stranger, "error", {}, "bad_request", "duplicate id"))
        h.finish(req, "mine")
        status, _, raw = fut.result(10)
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "mine"


# --- disconnects ------------------------------------------------------------------------------------


def raw_request(port: int, body: dict[str, Any]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return s


def test_disconnect_mid_stream_cancels() -> None:
    """A streaming client that hangs up after the first token has its generation cancelled."""
    with served() as (h, port):
        s = raw_request(port, {**CHAT, "stream": True})
        req = injected(h)
        h.services.current_stats["running"] = req.id
        h.stream(req, ["one"])
        got = b""
        while b'"one"' not in got:
            got += s.recv(4096)
        s.close()
        assert wait_until(lambda: h.services.cancelled == [req.id], 5)


def test_disconnect_while_queued_cancels_once_rkllmd_has_it() -> None:
    """A non-streaming client gone before its request is queued: the cancel is retried until the
    request is found, then lands."""
    with served() as (h, port):
        s = raw_request(port, CHAT)
        req = injected(h)
        s.close()
        threading.Event().wait(0.5)  # the handler notices and finds nothing to cancel yet
        assert h.services.cancelled == []
        h.services.current_stats["running"] = req.id  # now rkllmd has it
        assert wait_until(lambda: h.services.cancelled == [req.id], 5)


def test_a_port_in_use_is_retried_until_free() -> None:
    """A taken port leaves the plugin not_ready (retried with backoff); it serves once the port is free."""
    port = free_port()
    holder = socket.create_server(("127.0.0.1", port))
    with PluginHarness("http", {"port": port}) as h:
        assert h.state == "not_ready" and "in use" in h.status()["error"]
        holder.close()
        assert h.wait(lambda: h.state == "running", 5)
        assert call(port, "GET", "/health")[0] == 200


# --- tools and structured output -------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_DATA = {
    "model": "smollm2",
    "text": "",
    "finish_reason": "tool_calls",
    "usage": {"prompt_tokens": 9, "completion_tokens": 12},
    "tool_calls": [
        {
            "id": "call_ab12",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ],
}


def test_tool_call_with_the_openai_client(bg: Callable[..., Future[Any]]) -> None:
    """tools and tool_choice reach rkllmd; a call comes back as message.tool_calls, arguments a string."""
    with served() as (h, port):
        fut = bg(
            client(port).chat.completions.create,
            model="smollm2",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
        )
        req = injected(h)
        h.finish(req, data=CALL_DATA)
        done = fut.result(10)
    assert req.payload["tools"] == [WEATHER_TOOL] and req.payload["tool_choice"] == "required"
    inp = h.generate_input(req)
    assert inp.call_required and inp.tools[0]["function"]["name"] == "get_weather"
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_ab12", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_deltas_carry_index_and_id(bg: Callable[..., Future[Any]]) -> None:
    """Streamed: text deltas, then per call a delta with index, id and name, then its arguments,
    then finish_reason tool_calls, as Home Assistant's llama_cpp integration parses them."""
    with served() as (h, port):
        fut = bg(
            lambda: list(
                client(port).chat.completions.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": "Weather in Paris?"}],
                    tools=[WEATHER_TOOL],
                    stream=True,
                )
            )
        )
        req = injected(h)
        h.stream(req, ["Let me check."])
        h.finish(req, data={**CALL_DATA, "text": "Let me check."})
        chunks = fut.result(10)
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant" and deltas[1].content == "Let me check."
    first, second = deltas[2].tool_calls[0], deltas[3].tool_calls[0]
    assert (first.index, first.id, first.type, first.function.name) == (
        0,
        "call_ab12",
        "function",
        "get_weather",
    )
    assert first.function.arguments == ""
    assert (
        second.index == 0 and second.id is None and json.loads(second.function.arguments) == {"city": "Paris"}
    )
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, None, "tool_calls"]


def test_tool_results_and_response_format_reach_rkllmd(bg: Callable[..., Future[Any]]) -> None:
    """Assistant tool_calls and tool results go back to rkllmd; json_schema becomes its format."""
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with served() as (h, port):
        fut = bg(
            client(port).chat.completions.create,
            model="smollm2",
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            tools=[WEATHER_TOOL],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema, "strict": True},
            },
        )
        req = injected(h)
        h.finish(req, '{"answer": "sunny"}')
        done = fut.result(10)
    inp = h.generate_input(req)
    assert inp.format == schema and inp.messages[1].tool_calls[0].id == "c1"
    assert inp.messages[2].role == "tool" and inp.messages[2].tool_call_id == "c1"
    assert done.choices[0].message.content == '{"answer": "sunny"}'


def test_bad_tools_are_refused_in_openai_shape() -> None:
    """Tools that are not functions fail rkllmd's own check; a bad response_format is a 400."""
    messages = [{"role": "user", "content": "hi"}]
    with served() as (h, port):
        with pytest.raises(Exception, match=r"tools\[0\]"):
            h.generate_input(h.request({"messages": messages, "tools": [{"type": "x"}]}))
        body = {"messages": messages, "response_format": {"type": "yaml"}}
        status, _, raw = call(port, "POST", "/v1/chat/completions", body)
    assert status == 400 and error_of(raw)["param"] == "response_format.type"


# --- thinking models ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "think"),
    [
        ({"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "none"}, True),
        ({"think": "low"}, True),
        ({"reasoning_effort": "minimal"}, False),
        ({"reasoning_effort": "high"}, True),
        ({}, None),
    ],
)
def test_the_thinking_switch_as_openai_servers_take_it(extra: dict[str, Any], think: bool | None) -> None:
    from rkllmd.plugins.builtin.http.wire import parse

    assert parse("chat", {**CHAT, **extra}).fields.get("think") == think


def test_bad_thinking_switches_are_400_naming_the_field() -> None:
    with served() as (_h, port):
        for body, param in (
            ({**CHAT, "reasoning_effort": "extreme"}, "reasoning_effort"),
            ({**CHAT, "think": "lots"}, "think"),
            (
                {**CHAT, "chat_template_kwargs": {"enable_thinking": "yes"}},
                "chat_template_kwargs.enable_thinking",
            ),
        ):
            status, _, raw = call(port, "POST", "/v1/chat/completions", body)
            assert status == 400 and error_of(raw)["param"] == param, body


def test_thought_is_reasoning_content_streamed_and_not(bg: Callable[..., Future[Any]]) -> None:
    """With the openai client: ``reasoning_content`` deltas before the content ones, and on the
    whole message; never in ``content``."""
    with served() as (h, port):
        fut = bg(
            lambda: list(
                client(port).chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
        )
        req = injected(h)
        h.stream(req, ["Hi", "!"], thinking=["Greet ", "back."])
        h.finish(
            req, data={"model": "smollm2", "text": "Hi!", "thinking": "Greet back.", "finish_reason": "stop"}
        )
        chunks = fut.result(10)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert [getattr(d, "reasoning_content", None) for d in deltas[1:3]] == ["Greet ", "back."]
        assert "".join(d.content or "" for d in deltas) == "Hi!"

        fut = bg(lambda: client(port).chat.completions.create(**CHAT))
        req = injected(h, 2)
        h.finish(
            req, data={"model": "smollm2", "text": "Hi!", "thinking": "Greet back.", "finish_reason": "stop"}
        )
        message = fut.result(10).choices[0].message
        assert message.content == "Hi!" and getattr(message, "reasoning_content", None) == "Greet back."


def test_a_completion_stream_leaves_thought_out_and_stays_whole(bg: Callable[..., Future[Any]]) -> None:
    """/v1/completions has no field for thought: its pieces are skipped, and the chunked body
    (an empty chunk would end it) carries every text event to [DONE]."""
    with served() as (h, port):
        body = {"model": "smollm2", "prompt": "Once", "stream": True}
        fut = bg(call, port, "POST", "/v1/completions", body)
        req = injected(h)
        h.stream(req, [" upon", " a"], thinking=["hmm", "right"])
        h.finish(req, " upon a")
        status, _, raw = fut.result(10)
        evs = events(raw)
    assert status == 200 and [e["choices"][0]["text"] for e in evs[:-1]] == [" upon", " a", ""]
    assert evs[-1] == "[DONE]" and b"hmm" not in raw
