"""What the ``http`` and ``ollama`` plugins share above the transport: setup (:func:`start`) and
per-request error handling (:func:`answer`); their errors, keys and config table are in
``_httpconfig`` (which the transport imports too). The transport itself (aiohttp's server with
rkllmd's deadlines and connection limits, and the
:class:`~rkllmd.plugins.builtin._httpserver.Handler` an endpoint reads and answers through) is
``_httpserver``, imported only by :func:`start`: a daemon that enables neither plugin never
imports aiohttp.

Threads: setup (:func:`start`) and teardown on the main thread; ``<name>-server`` runs the event
loop that accepts, parses and runs every endpoint (coroutines); no thread per connection.
Nothing here runs on rkllmd's own threads.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rkllmd.plugins import NotReady, PluginContext
from rkllmd.plugins.builtin._httpconfig import (
    ErrorBody,
    Errors,
    HttpConfig,
    HttpError,
    Keys,
    configured_keys,
    is_loopback,
)
from rkllmd.plugins.builtin._relay import ClientGone, Relay

if TYPE_CHECKING:  # the transport imports aiohttp: only an enabled plugin's setup loads it
    from rkllmd.plugins.builtin._httpserver import Handler, Server


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
