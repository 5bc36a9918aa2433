"""HTTP plumbing for interface plugins, on the standard library only: a threading server with a
connection cap, a request handler that reads bounded bodies, notices a client gone and writes
JSON or a chunked stream, and bearer-key auth compared in constant time.

The error *shape* differs between the APIs served (OpenAI's ``{"error": {...}}``, Ollama's
``{"error": "..."}``), so the server takes a function that makes an error body from a status and
a message. Used by the ``ollama`` plugin; the ``http`` plugin has its own copy of the same ideas.

Threads: ``<name>-server`` accepts connections (``serve_forever``); each connection gets its own
handler thread (``<name>-handler``), which reads the request, waits for its answer and writes it.
Nothing here runs on rkllmd's own threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import select
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ErrorBody = Callable[[int, str], Any]  # (status, message) -> the JSON body of an error


class HttpError(Exception):
    """An error answered with a status code; the body comes from the server's ErrorBody."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Server(ThreadingHTTPServer):
    """A threading HTTP server with a cap on concurrent connections."""

    daemon_threads = True  # a stuck client must never hold up rkllmd's exit

    def __init__(
        self,
        host: str,
        port: int,
        handle: Callable[[Handler, str], None],
        *,
        log: Any,
        error_body: ErrorBody,
        max_connections: int,
        timeout_s: float,
        thread_name: str,
    ) -> None:
        """``handle(handler, method)`` serves one request; ``log`` is the plugin's."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.respond, self.log, self.error_body = handle, log, error_body
        self.thread_name = thread_name
        self._free = threading.BoundedSemaphore(max_connections)
        handler = type("BoundHandler", (Handler,), {"timeout": timeout_s})
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Server thread: hand the connection to a new handler thread, or refuse it when full."""
        if not self._free.acquire(blocking=False):
            body = json.dumps(self.error_body(503, "too many connections; try again later")).encode()
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):  # a fresh socket's send buffer takes this at once
                request.sendall(head.encode() + body)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Handler thread: a connection that failed outside ``handle`` (e.g. a reset while
        reading headers) is logged, not printed to stderr as socketserver does."""
        self.log.debug("http connection failed", client=str(client_address[0]), exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handler thread: serve one connection (keep-alive included), then free its place."""
        threading.current_thread().name = self.thread_name
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free.release()


class Handler(BaseHTTPRequestHandler):
    """One connection (its handler thread); the endpoints themselves are the server's ``handle``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server: Server
    streaming = False  # set once a 200 stream has begun: errors then go in the stream
    body_read = False  # the request's body was consumed (else an error closes the connection)

    def version_string(self) -> str:
        return "rkllmd"  # no Python version in the Server header

    def do_GET(self) -> None:
        self.server.respond(self, "GET")

    def do_HEAD(self) -> None:
        self.server.respond(self, "HEAD")

    def do_POST(self) -> None:
        self.server.respond(self, "POST")

    def do_PUT(self) -> None:
        self.server.respond(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.respond(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        # The base class writes every line to stderr; rkllmd's log has one line per request already.
        self.server.log.debug("http " + (format % args), client=self.client_address[0])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, header too long) in the API's shape."""
        self.close_connection = True
        body = self.server.error_body(code, message or HTTPStatus(code).phrase)
        self.send_json(code, body, {"Connection": "close"})

    # --- reading -----------------------------------------------------------------------------

    def read_body(self, limit: int) -> bytes:
        """The request body (empty without one); 413 over ``limit``, when the body is not read
        and the connection is closed after the answer."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "chunked request bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.body_read = True
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, "invalid Content-Length header") from None
        if length > limit:
            self.close_connection = True
            raise HttpError(413, f"the request body is {length} bytes; the limit is {limit}")
        self.body_read = True
        return self.rfile.read(length)

    def client_gone(self) -> bool:
        """Whether the client closed its end: its socket reads as end-of-file without blocking."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # --- writing -----------------------------------------------------------------------------

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_http_error(self, err: HttpError) -> None:
        headers = dict(err.headers)
        if err.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="rkllmd"'
        if not self.body_read and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self.close_connection = True  # its unread body would be taken for the next request
        if self.close_connection:
            headers["Connection"] = "close"
        self.send_json(err.status, self.server.error_body(err.status, err.message), headers)

    def start_chunked(self, content_type: str, headers: dict[str, str]) -> None:
        """Begin a 200 stream in chunked transfer encoding, so the connection can be kept."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # a proxy in front must not hold chunks back
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        self.streaming = True

    def send_chunk(self, data: bytes) -> None:
        """One chunk of the stream; raises OSError once the client is gone."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Keys:
    """Bearer keys, kept as SHA-256 digests so every comparison takes the same time."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """None when the header carries a configured key (or no keys are configured); else why not."""
        if not self._digests:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "missing API key: send 'Authorization: Bearer <key>'"
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for key in self._digests:  # no early exit: the time taken does not depend on which matched
            ok |= hmac.compare_digest(digest, key)
        return None if ok else "invalid API key"


def load_keys(inline: list[str], key_file: Path | None) -> list[str]:
    """The configured keys; a key file that cannot be read or holds no key is an error, so that
    a mistake never leaves the API open."""
    keys = list(inline)
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read api_key_file {key_file}: {exc.strerror}") from exc
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise ValueError(f"api_key_file {key_file} holds no key")
        keys.extend(found)
    return keys


def valid_keys(keys: list[str]) -> list[str]:
    """A pydantic check for inline keys: non-empty, no spaces."""
    if any(not k or k != k.strip() or " " in k for k in keys):
        raise ValueError("API keys must be non-empty and contain no spaces")
    return keys


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
