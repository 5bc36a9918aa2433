"""HTTP plumbing for interface plugins, on the standard library only: a threading server with a
connection cap, a request handler that reads bounded bodies, notices a client gone and writes
JSON, a chunked stream or server-sent events, bearer-key auth compared in constant time, and the
config, setup and per-request error handling the ``http`` and ``ollama`` plugins share.

The error *shape* differs between the APIs served (OpenAI's ``{"error": {...}}``, Ollama's
``{"error": "..."}``), so the server takes a function that makes an error body from a status and
a message, and an :class:`Errors` that words the errors answered here (an API's own error class,
a subclass of :class:`HttpError`, may make its own body).

Threads: setup (:func:`serve`) and teardown on the main thread; ``<name>-server`` accepts
connections (``serve_forever``); each connection gets its own handler thread (``<name>-handler``),
which reads the request, waits for its answer and writes it. Nothing here runs on rkllmd's own
threads.
"""

from __future__ import annotations

import contextlib
import errno
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

from pydantic import Field, field_validator

from rkllmd.plugins import NotReady, PluginConfig, PluginContext
from rkllmd.plugins.builtin._relay import ClientGone, Relay
from rkllmd.private import read_secret

ErrorBody = Callable[[int, str], Any]  # (status, message) -> the JSON body of an error


class HttpError(Exception):
    """An error answered with a status code; the body comes from the server's ErrorBody."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def body(self, shape: ErrorBody) -> Any:
        """The JSON body answered: the server's shape; a subclass may carry more (OpenAI's codes)."""
        return shape(self.status, self.message)


class Errors:
    """The wording of the errors this module answers by itself; an API may override any of them
    (these are the ``ollama`` plugin's)."""

    def busy(self) -> HttpError:
        """Every connection is taken: a 503 before the request is read."""
        return HttpError(503, "too many connections; try again later")

    def chunked(self) -> HttpError:
        return HttpError(411, "chunked request bodies are not accepted; send Content-Length")

    def no_length(self) -> HttpError | None:
        """A request without Content-Length; None: its body is empty."""
        return None

    def bad_length(self) -> HttpError:
        return HttpError(400, "invalid Content-Length header")

    def too_large(self, length: int, limit: int) -> HttpError:
        return HttpError(413, f"the request body is {length} bytes; the limit is {limit}")

    def internal(self, exc: Exception) -> HttpError:
        """A bug in an endpoint."""
        return HttpError(500, f"internal error: {exc}")


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
        errors: Errors | None = None,
        max_connections: int,
        timeout_s: float,
        thread_name: str,
    ) -> None:
        """``handle(handler, method)`` serves one request; ``log`` is the plugin's."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.respond, self.log, self.error_body = handle, log, error_body
        self.errors = errors or Errors()
        self.thread_name = thread_name
        self._free = threading.BoundedSemaphore(max_connections)
        handler = type("BoundHandler", (Handler,), {"timeout": timeout_s})
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Server thread: hand the connection to a new handler thread, or refuse it when full."""
        if not self._free.acquire(blocking=False):
            body = json.dumps(self.errors.busy().body(self.error_body)).encode()
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
        """The request body (empty without one, unless the server's Errors want a length); 413
        over ``limit``, when the body is not read and the connection is closed after the answer."""
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
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise errors.bad_length() from None
        if length > limit:
            self.close_connection = True
            raise errors.too_large(length, limit)
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
        if not self.body_read and (
            self.headers.get("Transfer-Encoding")
            or self.headers.get("Content-Length", "0").strip() not in ("", "0")
        ):
            self.close_connection = True  # its unread body would be taken for the next request
        if self.close_connection:
            headers["Connection"] = "close"
        self.send_json(err.status, err.body(self.server.error_body), headers)

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

    def start_events(self, headers: dict[str, str]) -> None:
        """Begin a 200 server-sent event stream. It has no length, so it ends with the connection."""
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
        self.streaming = True

    def send_event(self, data: Any) -> None:
        """One event, ``data: <json>`` (or ``data: <text>``); raises OSError once the client is gone."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()


def answer(
    h: Handler,
    endpoint: Callable[[], None],
    *,
    name: str,
    log: Any,
    path: str,
    in_stream: Callable[[HttpError], None],
    log_refused: bool = False,
) -> None:
    """Handler thread: run one request's endpoint. An HttpError is answered with its status, or
    by ``in_stream(err)`` once a 200 stream has begun; a bug is logged and answered 500 if nothing
    was sent yet; a client gone mid-request closes the connection."""
    h.streaming = h.body_read = False
    try:
        try:
            endpoint()
        except HttpError as err:
            if log_refused:
                log.info(f"{name} request refused", path=path, status=err.status, error=err.message)
            if h.streaming:
                in_stream(err)
            else:
                h.send_http_error(err)
        except ClientGone:
            h.close_connection = True
        except Exception as exc:
            if isinstance(exc, OSError):
                raise
            log.exception(f"{name} request failed", path=path)
            h.close_connection = True
            if not h.streaming:
                h.send_http_error(h.server.errors.internal(exc))
    except OSError:  # the client went away while we wrote, even an error: nothing left to tell it
        h.close_connection = True


class Keys:
    """Bearer keys, kept as SHA-256 digests so every comparison takes the same time."""

    MISSING = "missing API key: send 'Authorization: Bearer <key>'"
    INVALID = "invalid API key"

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
            return self.MISSING
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for key in self._digests:  # no early exit: the time taken does not depend on which matched
            ok |= hmac.compare_digest(digest, key)
        return None if ok else self.INVALID


def load_keys(inline: list[str], key_file: Path | None) -> list[str]:
    """The configured keys; a key file that cannot be read or holds no key is an error, so that
    a mistake never leaves the API open."""
    keys = list(inline)
    if key_file is not None:
        lines = read_secret(key_file, "api_key_file").splitlines()  # refused if every user may read it
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


# --- the plugins' shared config and setup ---------------------------------------------------------


class HttpConfig(PluginConfig):
    """The config both HTTP plugins take; each sets its own default ``port``."""

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 or :: for every interface")
    port: int = Field(ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list, repr=False, description="bearer tokens; none: no auth")
    api_key_file: Path | None = Field(None, description="more keys, one per line (# comments)")
    aliases: dict[str, str] = Field(
        default_factory=dict, description='model names clients send -> configured models; "*" = any other'
    )
    max_body_bytes: int | None = Field(None, ge=64, description="default: limits.max_payload_bytes")
    max_connections: int = Field(32, ge=1, le=4096, description="open connections; more are answered 503")
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After of a 503 when the queue is full")
    read_timeout_s: float = Field(30.0, gt=0, description="a client silent this long is disconnected")

    _keys_ok = field_validator("api_keys")(valid_keys)


def configured_keys(ctx: PluginContext, config: HttpConfig) -> list[str]:
    """Main thread: check the aliases against the models; the keys configured."""
    for alias, target in config.aliases.items():
        if target not in ctx.settings.models:
            raise ValueError(f"aliases.{alias}: {target!r} is not a configured model")
    return load_keys(config.api_keys, config.api_key_file)


def serve(
    ctx: PluginContext,
    config: HttpConfig,
    relay: Relay,
    handle: Callable[[Handler, str], None],
    *,
    name: str,
    error_body: ErrorBody,
    errors: Errors | None = None,
) -> Server:
    """Main thread: bind the port, route the relay's events, serve on ``<name>-server`` and stop
    it all at teardown; a port in use is NotReady (retried with backoff)."""
    try:
        server = Server(
            config.host,
            config.port,
            handle,
            log=ctx.log,
            error_body=error_body,
            errors=errors,
            max_connections=config.max_connections,
            timeout_s=config.read_timeout_s,
            thread_name=f"{name}-handler",
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # often an old process still closing, or another server
            raise NotReady(f"{config.host}:{config.port} is in use") from exc
        raise
    # The router before the first request can be injected: no event may find no queue.
    ctx.add_router(relay.route, tokens="local")  # the tokens of its own (local) requests
    # The poll interval bounds how long teardown waits for the accept loop to notice it should end.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name=f"{name}-server", daemon=True)
    thread.start()

    def stop() -> None:  # main thread, at teardown
        relay.close()  # handlers still waiting are answered 503 shutdown
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    ctx.on_teardown(stop)
    return server


class ApiBase:
    """What both plugins' endpoint classes hold: the plugin context, the relay, the bearer keys,
    the model aliases, and the body and Retry-After limits of their config."""

    def __init__(
        self,
        ctx: PluginContext,
        relay: Relay,
        *,
        keys: Keys,
        aliases: dict[str, str],
        max_body_bytes: int,
        retry_after_s: int,
        config: HttpConfig | None = None,
    ) -> None:
        self.ctx, self.relay, self.log = ctx, relay, ctx.log
        self.config = config  # the plugin's own table, for options of its own
        self._keys, self._aliases = keys, aliases
        self._max_body, self._retry_after = max_body_bytes, retry_after_s

    def handle(self, h: Handler, method: str) -> None:
        """A handler thread: route one request."""
        raise NotImplementedError


def start(
    ctx: PluginContext,
    config: HttpConfig,
    api_class: type[ApiBase],
    *,
    name: str,
    api_name: str,
    url_path: str = "",
    error_body: ErrorBody,
    errors: Errors | None = None,
) -> None:
    """Main thread: a plugin's whole setup: check the config, build its API over a new relay, serve
    it, and log where, warning when it listens beyond loopback with no key."""
    keys = configured_keys(ctx, config)
    relay = Relay()
    api = api_class(
        ctx,
        relay,
        keys=Keys(keys),
        aliases=dict(config.aliases),
        max_body_bytes=config.max_body_bytes or ctx.settings.limits.max_payload_bytes,
        retry_after_s=config.retry_after_s,
        config=config,
    )
    server = serve(ctx, config, relay, api.handle, name=name, error_body=error_body, errors=errors)
    url = url_of(config.host, server) + url_path
    ctx.log.info(f"{api_name}-compatible API listening", url=url, auth=bool(keys))
    if not keys and not is_loopback(config.host):
        ctx.log.warning(f"the {api_name} API listens beyond loopback without API keys", host=config.host)


def url_of(host: str, server: Server) -> str:
    """``http://host:port`` as clients write it (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
