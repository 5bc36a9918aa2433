"""What the ``http`` and ``ollama`` plugins share above the transport: errors, bearer keys
compared in constant time, the config table, setup (:func:`start`) and per-request error
handling (:func:`answer`). The transport itself (aiohttp's server with rkllmd's deadlines and
connection limits, and the :class:`~rkllmd.plugins.builtin._httpserver.Handler` an endpoint
reads and answers through) is ``_httpserver``, imported only by :func:`start`: a daemon that
enables neither plugin never imports aiohttp.

The error *shape* differs between the APIs served (OpenAI's ``{"error": {...}}``, Ollama's
``{"error": "..."}``), so the server takes a function that makes an error body from a status and
a message, and an :class:`Errors` that words the errors answered here (an API's own error class,
a subclass of :class:`HttpError`, may make its own body).

Threads: setup (:func:`start`) and teardown on the main thread; ``<name>-server`` runs the event
loop that accepts, parses and runs every endpoint (coroutines); no thread per connection.
Nothing here runs on rkllmd's own threads.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from rkllmd.plugins import NotReady, PluginConfig, PluginContext, read_secret
from rkllmd.plugins.builtin._relay import ClientGone, Relay

if TYPE_CHECKING:  # the transport imports aiohttp: only an enabled plugin's setup loads it
    from rkllmd.plugins.builtin._httpserver import Handler, Server

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

    def body_timeout(self, seconds: float) -> HttpError:
        """The body did not arrive within the body deadline (the connection is closed)."""
        return HttpError(408, f"the request body did not arrive within {seconds:g} s")

    def internal(self, exc: Exception) -> HttpError:
        """A bug in an endpoint."""
        return HttpError(500, f"internal error: {exc}")


async def answer(
    h: Handler,
    endpoint: Callable[[], Awaitable[None]],
    *,
    name: str,
    log: Any,
    path: str,
    in_stream: Callable[[HttpError], Awaitable[None]],
    log_refused: bool = False,
) -> None:
    """Server thread: run one request's endpoint. An HttpError is answered with its status, or
    by ``in_stream(err)`` once a 200 stream has begun; a bug is logged and answered 500 if nothing
    was sent yet; a client gone mid-request closes the connection."""
    try:
        try:
            await endpoint()
        except HttpError as err:
            if log_refused:
                log.info(f"{name} request refused", path=path, status=err.status, error=err.message)
            if h.streaming:
                await in_stream(err)
            else:
                await h.send_http_error(err)
        except ClientGone:
            h.close_connection = True
        except Exception as exc:
            if isinstance(exc, OSError):
                raise
            log.exception(f"{name} request failed", path=path)
            h.close_connection = True
            if not h.streaming:
                await h.send_http_error(h.server.errors.internal(exc))
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
    max_connections: int = Field(
        32, ge=1, le=4096, description="past it an idle connection is closed, or the new one gets 503"
    )
    max_connections_per_client: int = Field(8, ge=1, le=4096, description="connections from one address")
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After of a 503 when the queue is full")
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's head, from its first byte")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request's body, from its head (408)")
    idle_timeout_s: float = Field(15.0, gt=0, le=3600, description="a kept-alive connection with no request")
    read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a client that stops reading its answer this long is disconnected"
    )

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
    handle: Callable[[Handler, str], Awaitable[None]],
    *,
    name: str,
    error_body: ErrorBody,
    errors: Errors | None = None,
) -> Server:
    """Main thread: bind the port, route the relay's events, serve on ``<name>-server`` and stop
    it all at teardown; a port in use is NotReady (retried with backoff)."""
    from rkllmd.plugins.builtin._httpserver import Server  # aiohttp: only now the plugin is enabled

    try:
        server = Server(config, handle, log=ctx.log, error_body=error_body, errors=errors, name=name)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # often an old process still closing, or another server
            raise NotReady(f"{config.host}:{config.port} is in use") from exc
        raise
    # The router before the first request can be injected: no event may find no queue.
    # The tokens of its own (local) requests, from the inference thread: route never blocks.
    ctx.add_router(relay.route, tokens="local", direct=True)
    server.start()

    def stop() -> None:  # main thread, at teardown
        relay.close()  # handlers still waiting are answered 503 shutdown
        server.stop()

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

    async def handle(self, h: Handler, method: str) -> None:
        """The server thread: route one request."""
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
    return f"http://{f'[{host}]' if ':' in host else host}:{server.port}"
