"""The HTTP plumbing, on the standard library only: a threading server and its request handler.

Threads: ``http-server`` accepts connections (``serve_forever``); each connection gets its own
*HTTP handler thread* (``http-handler``), which reads the request, waits for its answer and writes
it. Nothing here runs on rkllmd's own threads.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .wire import ApiError


class Server(ThreadingHTTPServer):
    """A threading HTTP server with a cap on concurrent connections."""

    daemon_threads = True  # a stuck client must never hold up rkllmd's exit

    def __init__(
        self,
        host: str,
        port: int,
        handle: Callable[[Handler, str], None],
        log: Any,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        """``handle(handler, method)`` serves one request (api.Api.handle); ``log`` is the plugin's."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.respond, self.log = handle, log
        self._free = threading.BoundedSemaphore(max_connections)
        handler = type("BoundHandler", (Handler,), {"timeout": timeout_s})
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Server thread: hand the connection to a new handler thread, or refuse it when full."""
        if not self._free.acquire(blocking=False):
            body = json.dumps(
                ApiError(
                    503, "Too many connections; try again later.", type="server_error", code="busy"
                ).body()
            ).encode()
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
        """Handler thread: a connection that failed outside api.Api.handle (e.g. a reset while
        reading headers) is logged, not printed to stderr as socketserver does."""
        self.log.debug("http connection failed", client=str(client_address[0]), exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handler thread: serve one connection (keep-alive included), then free its place."""
        threading.current_thread().name = "http-handler"
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free.release()


class Handler(BaseHTTPRequestHandler):
    """One connection (HTTP handler thread); the endpoints themselves are in api.Api."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client's connection pool expects
    server: Server
    events_started = False  # set once a 200 event stream has begun: errors then go in the stream

    def version_string(self) -> str:
        return "rkllmd"  # no Python version in the Server header

    def do_GET(self) -> None:
        self.server.respond(self, "GET")

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
        """The base class's own errors (bad request line, header too long) as OpenAI errors."""
        self.close_connection = True
        err = ApiError(code, message or HTTPStatus(code).phrase, code=None)
        self.send_json(code, err.body(), {"Connection": "close"})

    # --- reading -----------------------------------------------------------------------------

    def read_body(self, limit: int) -> bytes:
        """The request body; 411 without a length, 413 over ``limit`` (the body is then not read,
        so the connection is closed after the answer)."""
        raw = self.headers.get("Content-Length")
        if raw is None or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "A Content-Length header is required.", code="length_required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "Invalid Content-Length header.", code="bad_request") from None
        if length > limit:
            self.close_connection = True
            raise ApiError(
                413, f"The request body is {length} bytes; the limit is {limit}.", code="payload_too_large"
            )
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
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_api_error(self, err: ApiError) -> None:
        headers = dict(err.headers)
        if err.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="rkllmd"'
        if self.close_connection:
            headers["Connection"] = "close"
        self.send_json(err.status, err.body(), headers)

    def start_events(self, headers: dict[str, str]) -> None:
        """Begin a server-sent event stream. It has no length, so it ends with the connection."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # a proxy in front must not hold chunks back
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def send_event(self, data: Any) -> None:
        """One event, ``data: <json>`` (or ``data: [DONE]``); raises OSError once the client is gone."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()
