"""The HTTP transport under the ``http`` and ``ollama`` plugins: aiohttp's low-level server on one
event loop, with the deadlines and connection limits rkllmd needs (docs/HTTP.md, "The server").

aiohttp parses HTTP/1.1 (its llhttp parser answers garbage, a duplicate ``Content-Length`` or
``Content-Length`` with ``Transfer-Encoding`` with 400) and streams without a thread per
connection. What it leaves to its user is added here, per connection (:class:`_Conn`):

- the head of each request must be complete within ``header_timeout_s`` of its first byte, and a
  connection with no request in progress is closed after ``idle_timeout_s`` (keep-alive);
- the body must arrive within ``body_timeout_s`` (:meth:`Handler.read_body`);
- a client that stops reading its answer for ``read_timeout_s`` is disconnected;
- at most ``max_connections`` connections, ``max_connections_per_client`` from one address. A
  connection that is not in a request (idle, or still sending its head) holds no slot a new one
  needs: the oldest of them is closed to make room. Only requests being served count, so slow or
  idle clients cannot lock others out; when every slot serves a request the answer is 503.

Threads: the plugin's ``<name>-server`` thread runs the event loop: it accepts, parses, runs
every endpoint (coroutines) and writes. Setup binds the socket on the main thread (a port in use
is reported at once) and teardown stops the loop from the main thread. This module is imported
only by an enabled plugin's setup: rkllmd without an HTTP plugin never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rkllmd.plugins.builtin._httpconfig import ErrorBody, Errors, HttpConfig, HttpError
from rkllmd.plugins.builtin._streamwrite import Format, StreamWriter

Respond = Callable[["Handler", str], Awaitable[None]]
_SERVER = "rkllmd"  # the Server header: no library or Python version


class Handler:
    """One request (on the server thread): what an endpoint reads and how it answers."""

    def __init__(self, request: web.BaseRequest, server: Server) -> None:
        self.request, self.server = request, server
        self.path: str = request.raw_path
        self.command: str = request.method
        self.headers = request.headers
        self.close_connection = False  # close after this request (e.g. its body was not read)
        self.streaming = False  # a 200 stream has begun: errors then go in the stream
        self.body_read = False
        self.response: web.StreamResponse | None = None
        self.gone = False
        self._on_gone: list[Callable[[], None]] = []
        self._writer: StreamWriter | None = None

    def on_gone(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the server thread) once the client disconnects, at once if it has."""
        if self.gone:
            fn()
        else:
            self._on_gone.append(fn)

    def lost(self) -> None:
        """The connection is gone (server thread): tell whoever waits for this request."""
        if self._writer is not None:
            self._writer.close()  # before the socket is closed: asyncio closes it after this
        if not self.gone:
            self.gone = True
            for fn in self._on_gone:
                fn()

    # --- reading -----------------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        """The request body (empty without one, unless the server's Errors want a length); 413
        over ``limit`` and 408 past the body deadline, each closing the connection."""
        errors = self.server.errors
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise errors.chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            missing = errors.no_length()
            if missing is not None:
                self.close_connection = True
                raise missing
            self.body_read = True
            return b""
        length = int(raw)  # the parser refused anything but digits with 400
        if length > limit:
            self.close_connection = True
            raise errors.too_large(length, limit)
        try:
            async with asyncio.timeout(self.server.config.body_timeout_s):
                data = await self.request.content.readexactly(length)
        except TimeoutError:
            self.close_connection = True
            raise errors.body_timeout(self.server.config.body_timeout_s) from None
        except asyncio.IncompleteReadError:  # the client closed before sending it all
            self.close_connection = True
            raise ConnectionResetError("the client closed its connection mid-body") from None
        self.body_read = True
        return data

    # --- writing -----------------------------------------------------------------------------

    def _response(self, status: int, content_type: str, headers: dict[str, str] | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Server": _SERVER, "Content-Type": content_type})
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        if self.close_connection or resp.headers.get("Connection", "").lower() == "close":
            resp.force_close()
        self.response = resp
        return resp

    async def send_bytes(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        resp = self._response(status, content_type, headers)
        resp.content_length = len(body)
        await resp.prepare(self.request)
        await resp.write_eof(b"" if self.command == "HEAD" else body)

    async def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        await self.send_bytes(status, "application/json; charset=utf-8", body, headers)

    async def send_http_error(self, err: HttpError) -> None:
        headers = dict(err.headers)
        if err.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="rkllmd"'
        if not self.body_read and (
            self.headers.get("Transfer-Encoding")
            or self.headers.get("Content-Length", "0").strip() not in ("", "0")
        ):
            self.close_connection = True  # its body is not read: no time is spent taking it in
        await self.send_json(err.status, err.body(self.server.error_body), headers)

    async def start_chunked(self, content_type: str, headers: dict[str, str]) -> None:
        """Begin a 200 stream in chunked transfer encoding, so the connection can be kept."""
        resp = self._response(200, content_type, headers)
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold chunks back
        resp.enable_chunked_encoding()
        await resp.prepare(self.request)
        self.streaming = True

    async def send_chunk(self, data: bytes) -> None:
        """One chunk of the stream; raises OSError once the client is gone."""
        if data:
            assert self.response is not None
            await self.response.write(data)

    def stream_writer(self, fmt: Format) -> StreamWriter | None:
        """A writer of this stream's token events from the thread they arrive on (_streamwrite),
        once the stream has begun; None where the transport is not a plain socket."""
        transport, conn = self.request.transport, self.request.protocol
        if not self.streaming or self.gone or not isinstance(transport, asyncio.Transport):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:
            return None
        assert isinstance(conn, _Conn)
        self._writer = StreamWriter(transport, sock.fileno(), fmt, lambda: conn.expire(""))
        return self._writer

    async def end_chunked(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    async def start_events(self, headers: dict[str, str]) -> None:
        """Begin a 200 server-sent event stream (chunked, so the connection can be kept)."""
        await self.start_chunked("text/event-stream; charset=utf-8", headers)

    async def send_event(self, data: Any) -> None:
        """One event, ``data: <json>`` (or ``data: <text>``); raises OSError once the client is gone."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        await self.send_chunk(f"data: {text}\n\n".encode())

    async def end_events(self) -> None:
        await self.end_chunked()


class _Conn(web.RequestHandler):
    """One client connection: aiohttp's protocol, plus its state for the deadlines and limits.

    ``idle`` (no request; keep-alive deadline), ``head`` (a request's first bytes came; header
    deadline), ``busy`` (an endpoint serves a request; only the body and send deadlines apply).
    """

    def __init__(self, manager: web.Server, server: Server, **kwargs: Any) -> None:
        super().__init__(manager, loop=server.loop, **kwargs)
        self.rk = server
        self.client = ""
        self.state = "idle"
        self.since = 0.0
        self.current: Handler | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None

    # --- asyncio's protocol callbacks (server thread) ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        if self.rk.admit(self):
            self._to("idle")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.rk.conns.pop(self, None)
        for t in (self._timer, self._stall):
            if t is not None:
                t.cancel()
        if self.current is not None:
            self.current.lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.state == "idle":
            self._to("head")
        super().data_received(data)

    def pause_writing(self) -> None:
        """The client does not take what is sent: it has ``read_timeout_s`` to start again."""
        super().pause_writing()
        self._stall = self.rk.loop.call_later(self.rk.config.read_timeout_s, self.expire, "stopped reading")

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().resume_writing()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (or a bug outside an endpoint): the API's own error
        shape, a log line, and the connection closed."""
        why = str(getattr(exc, "message", "") or exc or message or "").strip().splitlines()
        reason = why[0] if why else "unparsable request"
        self.rk.log.info(f"{self.rk.name} request refused", client=self.client, status=status, error=reason)
        text = f"bad request: {reason}" if status == 400 else reason
        body = json.dumps(self.rk.error_body(status, text), ensure_ascii=False).encode()
        resp = web.Response(status=status, body=body, headers={"Server": _SERVER})
        resp.content_type = "application/json"
        resp.force_close()
        return resp

    # --- rkllmd's state ------------------------------------------------------------------------

    def _to(self, state: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state, self.since = state, self.rk.loop.time()
        cfg = self.rk.config
        if state == "idle":
            self._timer = self.rk.loop.call_later(cfg.idle_timeout_s, self.expire, "")
        elif state == "head":
            self._timer = self.rk.loop.call_later(cfg.header_timeout_s, self.expire, "request head too slow")

    def serving(self, h: Handler | None) -> None:
        """An endpoint starts (``h``) or ends (None) serving a request on this connection."""
        self.current = h
        self._to("busy" if h is not None else "idle")

    def expire(self, why: str) -> None:
        """Close the connection (a deadline passed, or its slot is needed); ``why`` is logged."""
        if why:
            self.rk.log.info(f"{self.rk.name} connection closed", client=self.client, reason=why)
        self.rk.conns.pop(self, None)
        if self.transport is not None:
            self.transport.abort()


class Server:
    """aiohttp's low-level server on its own event loop and thread, with rkllmd's limits."""

    def __init__(
        self,
        config: HttpConfig,
        respond: Respond,
        *,
        log: Any,
        error_body: ErrorBody,
        errors: Errors | None,
        name: str,
    ) -> None:
        """Bind (main thread); OSError, e.g. EADDRINUSE, if the address cannot be had."""
        self.config, self.respond, self.log, self.error_body = config, respond, log, error_body
        self.errors = errors or Errors()
        self.name = name
        self.conns: dict[_Conn, None] = {}  # admitted connections, oldest first
        self.sock = _listen(config.host, config.port)
        self.port: int = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self._manager: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-server", daemon=True)

    def start(self) -> None:
        """Main thread: run the loop on the server thread, serving once this returns."""
        self._thread.start()
        if not self._ready.wait(10) or self._failed is not None:
            raise RuntimeError(f"the HTTP server did not start: {self._failed}")

    def _run(self) -> None:  # the server thread
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._open())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _open(self) -> None:
        self._manager = web.Server(self._serve, handler_cancellation=False)
        self._listener = await self.loop.create_server(self._protocol, sock=self.sock)

    def _protocol(self) -> _Conn:
        assert self._manager is not None
        cfg = self.config
        return _Conn(
            self._manager,
            self,
            keepalive_timeout=cfg.idle_timeout_s,
            access_log=None,  # rkllmd's own lines say what happened
            lingering_time=0,  # an unread body closes the connection instead
        )

    def admit(self, conn: _Conn) -> bool:
        """A new connection (server thread): admitted, making room if it must; or answered 503."""
        cfg = self.config
        same = [c for c in self.conns if c.client == conn.client]
        if len(same) >= cfg.max_connections_per_client and not self._evict(same):
            return self._refuse(conn, "too many connections from this client")
        if len(self.conns) >= cfg.max_connections and not self._evict(list(self.conns)):
            return self._refuse(conn, "too many connections")
        self.conns[conn] = None
        return True

    def _evict(self, among: list[_Conn]) -> bool:
        """Close the connection of ``among`` that has waited longest without a request in progress."""
        free = [c for c in among if c.state != "busy"]
        if not free:
            return False
        min(free, key=lambda c: c.since).expire("its slot was needed")
        return True

    def _refuse(self, conn: _Conn, why: str) -> bool:
        self.log.info(f"{self.name} connection refused", client=conn.client, reason=why)
        body = json.dumps(self.errors.busy().body(self.error_body)).encode()
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nServer: {_SERVER}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        if conn.transport is not None:
            conn.transport.write(head.encode() + body)
            conn.transport.close()
        return False

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's request handler (server thread): one request through the API's ``respond``."""
        conn = request.protocol
        assert isinstance(conn, _Conn)
        h = Handler(request, self)
        conn.serving(h)
        try:
            if request.version < (1, 0):  # an HTTP/0.9 request line: a headed 400, never a bare body
                h.close_connection = True
                await h.send_http_error(HttpError(400, "HTTP/0.9 requests are not served"))
            else:
                await self.respond(h, request.method)
        finally:
            conn.serving(None)
        if h.close_connection:
            conn.force_close()
        if h.response is None:  # the client left before any answer: nothing to send
            conn.force_close()
            return web.Response(status=500)
        return h.response

    def stop(self, grace_s: float = 2.0) -> None:
        """Main thread: stop accepting, give requests still being answered ``grace_s``, close."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(grace_s), self.loop).result(grace_s + 5)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    async def _close(self, grace_s: float) -> None:
        if self._listener is not None:
            self._listener.close()
        deadline = self.loop.time() + grace_s
        while any(c.state == "busy" for c in self.conns) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns):
            conn.expire("")
        if self._manager is not None:
            await self._manager.shutdown(1.0)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses the port at once
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
