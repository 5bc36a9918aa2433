"""A streamed answer once it has begun: its tokens are written to the client by the thread that
routes them (rkllmd/plugins/builtin/_streamwrite.py), not by the server's event loop.

What a client relies on is the same as before: every token in order, in the API's own format and
valid chunked framing, then the end of the stream; a client that leaves is cancelled; a client
that stops reading is cut at ``read_timeout_s`` and cancelled, while rkllmd's thread that routes
the tokens is never held up by it. Both plugins, on the testing kit, with raw sockets and
http.client (which refuses bad chunked framing). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from rkllmd.plugins import Exchange, LocalMessage
from rkllmd.testing import PluginHarness, wait_until

# Quotes, backslashes, newlines, control characters and non-ASCII: each must be escaped as JSON.
TRICKY = ['He said "hi"', "\\n is not \n", "tab\there", "\x01\x1f", "é ñ 漢字 🙂", " ", "</s>"]


class Api:
    """One plugin's request and how to read its stream."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        if plugin == "http":
            self.path, self.sep = "/v1/chat/completions", b"\n\n"
            self.body: dict[str, Any] = {"model": "smollm2", "stream": True}
        else:
            self.path, self.sep = "/api/chat", b"\n"
            self.body = {"model": "smollm2", "stream": True}
        self.body["messages"] = [{"role": "user", "content": "hi"}]

    def request(self, port: int, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the window is small from the start
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        data = json.dumps(self.body).encode()
        s.sendall(
            f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        return s

    def deltas(self, body: bytes) -> tuple[list[str], list[Any]]:
        """The text deltas of a whole (de-chunked) stream body, and every event parsed."""
        out, parsed = [], []
        for block in body.split(self.sep):
            if not block:
                continue
            text = block.decode()
            if self.plugin == "http":
                assert text.startswith("data: "), text
                text = text[len("data: ") :]
                if text == "[DONE]":
                    parsed.append(text)
                    continue
            event = json.loads(text)
            parsed.append(event)
            if self.plugin == "http":
                delta = event["choices"][0]["delta"].get("content")
            else:
                delta = None if event["done"] else event["message"]["content"]
            if delta:
                out.append(delta)
        return out, parsed


@contextmanager
def served(plugin: str, **config: Any) -> Iterator[tuple[PluginHarness, int]]:
    port = free_port()
    with PluginHarness(plugin, {"port": port, **config}) as h:
        assert h.state == "running", h.status()
        yield h, port


def injected(h: PluginHarness) -> Exchange:
    assert wait_until(lambda: len(h.services.injected) >= 1, 5), "nothing injected"
    msg = h.services.injected[0]
    assert isinstance(msg, LocalMessage)
    return h.local_request(msg)


def read_until(s: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    while marker not in got:
        chunk = s.recv(65536)
        assert chunk, f"closed before {marker!r}"
        got += chunk
    return got


def stream_started(h: PluginHarness, s: socket.socket, req: Exchange) -> None:
    """The first token sent and read by the client: the endpoint has begun its stream and hands
    the tokens to come to the thread that routes them."""
    h.stream(req, ["first"])
    read_until(s, b"first")
    threading.Event().wait(0.1)  # the endpoint attaches its writer right after that write


@pytest.fixture
def bg() -> Iterator[Callable[..., Future[Any]]]:
    with ThreadPoolExecutor(2) as pool:
        yield pool.submit


@pytest.mark.parametrize("plugin", ["http", "ollama"])
def test_every_token_arrives_in_order_escaped_and_framed_then_the_end(plugin: str) -> None:
    api = Api(plugin)
    many = [f"t{i} " for i in range(300)] + TRICKY
    with served(plugin) as (h, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", api.path, json.dumps(api.body), {"Content-Type": "application/json"})
        req = injected(h)
        h.stream(req, ["first"])
        resp = conn.getresponse()  # the status line waits for the first token
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        head = b""
        while b"first" not in head:
            head += resp.read1()
        threading.Event().wait(0.1)
        for delta in many:  # one at a time, then a burst: both ways a router hands tokens over
            h.stream(req, [delta])
        h.stream(req, ["last"] * 50)
        h.finish(req, "first" + "".join(many) + "last" * 50, finish_reason="length")
        body = resp.read()  # http.client refuses a malformed chunk
        conn.close()
    deltas, parsed = api.deltas(head + body)
    assert deltas == ["first", *many, *["last"] * 50]
    if plugin == "http":
        assert parsed[-2]["choices"][0]["finish_reason"] == "length" and parsed[-1] == "[DONE]"
        assert all(p["id"] == parsed[0]["id"] for p in parsed[:-1])
    else:
        assert parsed[-1]["done"] is True and parsed[-1]["done_reason"] == "length"
        assert all(p["created_at"].endswith("Z") and not p["done"] for p in parsed[:-1])


@pytest.mark.parametrize("plugin", ["http", "ollama"])
def test_a_client_gone_mid_stream_is_cancelled_and_later_tokens_go_nowhere(plugin: str) -> None:
    api = Api(plugin)
    with served(plugin) as (h, port):
        s = api.request(port)
        req = injected(h)
        h.services.current_stats["running"] = req.id
        stream_started(h, s, req)
        h.stream(req, ["second"])
        read_until(s, b"second")
        s.close()
        for i in range(50):  # the socket is going or gone: nothing raises, nothing blocks
            h.stream(req, [f"after{i}"])
            threading.Event().wait(0.005)
        assert wait_until(lambda: h.services.cancelled == [req.id], 5)


@pytest.mark.parametrize("plugin", ["http", "ollama"])
def test_a_client_that_stops_reading_is_cut_at_the_read_deadline_and_cancelled(
    plugin: str, bg: Callable[..., Future[Any]]
) -> None:
    """The tokens fill the client's window, then the server's buffer; the thread routing them
    goes on (it never waits for the client), and at the deadline the client is cut and cancelled."""
    api = Api(plugin)
    with served(plugin, read_timeout_s=1.0) as (h, port):
        s = api.request(port, rcvbuf=4096)
        req = injected(h)
        h.services.current_stats["running"] = req.id
        stream_started(h, s, req)
        big = "x" * 16384
        routed = bg(h.stream, req, [big] * 400)  # ~6.5 MB: far beyond any socket buffer
        routed.result(timeout=5)  # all routed while the client reads nothing
        assert wait_until(lambda: h.services.cancelled == [req.id], 5)
        # The server closed the connection: reading what it took ends (end of file, or a reset
        # for the data it had not delivered), long before the 6.5 MB the client never read.
        s.settimeout(5)
        got = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                got += len(chunk)
        s.close()
        assert got < 400 * 16384
