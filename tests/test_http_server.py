"""The HTTP plugins' server against clients that are slow, idle, sloppy or hostile (issue 27).

Both plugins share the transport (rkllmd/plugins/builtin/_httpserver.py); these run the ``http``
plugin, and the Ollama one where its shape differs, on the testing kit over loopback, with raw
sockets, curl and the official openai client. Every count and wait is bounded; the deadlines are
configured short so that the tests take seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from rkllmd.testing import PluginHarness
from tests.helpers import REPO
from tests.test_http import CHAT, client, injected, raw_request


@contextmanager
def served(config: dict[str, Any], plugin: str = "http") -> Iterator[tuple[PluginHarness, int]]:
    port = free_port()
    with PluginHarness(plugin, {"port": port, **config}) as h:
        assert h.state == "running", h.status()
        yield h, port


def curl(port: int, path: str = "/health") -> int:
    """The status curl gets (0: no answer within its bounds)."""
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return int(out.stdout or 0)


def answer_of(s: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    s.settimeout(limit_s)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed ``s`` (it reads as end of file, or was reset)."""
    s.settimeout(0.05)
    try:
        return s.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def slow_head(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection that has sent the first bytes of a request head, and no more."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    return s


# --- deadlines --------------------------------------------------------------------------------


def test_a_head_trickled_one_byte_at_a_time_is_cut_at_the_header_deadline() -> None:
    """Slowloris: a byte every 0.4 s keeps the connection busy for ever unless the whole head
    has a deadline. The server closes it once header_timeout_s (1 s) has passed, however
    steadily the bytes come."""
    with served({"header_timeout_s": 1.0, "idle_timeout_s": 30.0}) as (_, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        start, closed_after = time.monotonic(), None
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30:
            try:
                s.send(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - start
                break
            if closed_by_server(s):
                closed_after = time.monotonic() - start
                break
            time.sleep(0.4)
        s.close()
    # 30 bytes at 0.4 s would be 12 s; the cut comes at the deadline (plus scheduling slack).
    assert closed_after is not None and closed_after < 6, closed_after


def test_a_body_that_does_not_come_is_408_at_the_body_deadline() -> None:
    """A head that promises 100 bytes and sends 10: 408 in the API's shape once body_timeout_s
    (1 s) has passed, the connection closed, and nothing reaches rkllmd."""
    with served({"body_timeout_s": 1.0}) as (h, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"model": '
        )
        start = time.monotonic()
        got = answer_of(s)
        took = time.monotonic() - start
        s.close()
        assert h.services.injected == []
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), got
    assert json.loads(body)["error"]["message"].startswith("the request body did not arrive within 1 s")
    assert took < 6, took


# --- connection limits ------------------------------------------------------------------------


def test_slow_clients_at_the_limit_do_not_lock_out_good_requests() -> None:
    """Twice max_connections slow clients, each holding a half-sent head (their header deadline
    far away), from the same address as the good clients: curl and the openai client are still
    answered, each taking the place of the slow connection that waited longest."""
    limits = {"max_connections": 4, "max_connections_per_client": 4, "header_timeout_s": 60.0}
    with served(limits) as (_, port), ExitStack() as stack:
        slow = [slow_head(port) for _ in range(8)]
        for s in slow:
            stack.callback(s.close)
        statuses = [curl(port) for _ in range(6)]
        models = client(port).models.list()
        assert statuses == [200] * 6
        assert [m.id for m in models.data] == ["smollm2"]
        # never more slow connections open than there are places
        assert sum(not closed_by_server(s) for s in slow) <= 4


def test_idle_keep_alive_connections_do_not_lock_others_out() -> None:
    """Ten times max_connections idle kept-alive connections (each has had its answer and says
    nothing more): a new client is answered at once."""
    with served({"max_connections": 2, "idle_timeout_s": 60.0}) as (_, port), ExitStack() as stack:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            stack.callback(s.close)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert curl(port) == 200


def test_one_address_cannot_take_every_slot() -> None:
    """Requests in progress from one address are held to max_connections_per_client: the next from
    that address is 503 busy, while another address is still served."""
    with served({"max_connections": 8, "max_connections_per_client": 2}) as (h, port):
        held = [raw_request(port, CHAT), raw_request(port, CHAT)]  # both wait for rkllmd
        reqs = [injected(h, 1), injected(h, 2)]
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        third.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = answer_of(third)
        other = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        served_other = answer_of(other)
        for req in reqs:
            h.finish(req, "done")
        for s in (*held, third, other):
            s.close()
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and json.loads(body)["error"]["code"] == "busy"
    assert served_other.startswith(b"HTTP/1.1 200 ")


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage", [b"GARBAGE\r\n\r\n", b"GET /health\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\r\n\r\n"]
)
def test_garbage_is_a_headed_400_in_the_apis_shape(garbage: bytes) -> None:
    """Garbage, an HTTP/0.9 request line, a TLS hello: a 400 with a status line and the
    API's error object, then the connection closed; never a bare HTTP/0.9 body."""
    with served({}) as (_, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(garbage)
        got = answer_of(s)
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/") and b" 400 " in head.split(b"\r\n")[0], got
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "headers",
    [b"Content-Length: 2\r\nContent-Length: 40\r\n", b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"],
)
def test_conflicting_body_lengths_are_refused(headers: bytes) -> None:
    """Two Content-Lengths, or one with Transfer-Encoding (the stuff of request smuggling): 400
    and closed, and nothing reaches rkllmd, whichever length would have been believed."""
    body = json.dumps(CHAT).encode()
    with served({}, plugin="ollama") as (h, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body)
        got = answer_of(s)
        s.close()
        time.sleep(0.2)
        assert h.services.injected == []
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request"), got
    assert isinstance(json.loads(rest)["error"], str)  # Ollama's shape


# --- imports ------------------------------------------------------------------------------------

_PROBE = """
import sys
from rkllmd.plugins.builtin import http, ollama  # the plugins' modules, as a config check loads them
from rkllmd.testing import PluginHarness
with PluginHarness("templates", {}) as h:
    assert h.state == "running", h.status()
print("before:", "aiohttp" in sys.modules)
with PluginHarness(sys.argv[1], {"port": int(sys.argv[2])}) as h:
    assert h.state == "running", h.status()
print("after:", "aiohttp" in sys.modules)
"""


@pytest.mark.parametrize("plugin", ["http", "ollama"])
def test_aiohttp_is_imported_only_once_an_http_plugin_is_enabled(plugin: str) -> None:
    """Boards that only want MQTT carry none of the HTTP server: importing the plugins' modules
    and running another plugin imports no aiohttp; enabling one does."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, plugin, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "before: False" in out.stdout and "after: True" in out.stdout, out.stdout
