"""ollama: an Ollama-compatible HTTP API on rkllmd's one inference queue (docs/HOMEASSISTANT.md).

    [plugins]
    enabled = ["ollama"]
    [plugins.ollama]
    host = "127.0.0.1"          # loopback only unless told otherwise
    port = 11434                # Ollama's own port, where its clients look first
    api_key_file = "/etc/rkllmd/ollama-keys"   # or api_keys = ["..."]; none: no auth

``/api/chat`` and ``/api/generate`` (NDJSON streams, or one object with ``stream: false``),
``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``, and ``/api/pull`` and ``/api/delete``
for configured names (nothing is ever downloaded or deleted). Requests are injected as rkllmd
generate requests, so they meet the same preprocessors and wait in the same bounded queue as MQTT
and OpenAI-API requests, in arrival order. Standard library only: no extra to install.

Threads: setup/teardown on the main thread; ``ollama-server`` accepts; one ``ollama-handler``
thread per connection; the router (the http plugin's Relay.route) on rkllmd's dispatcher thread.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

from pydantic import Field, field_validator

from rkllmd.plugins import NotReady, Plugin, PluginConfig, PluginContext
from rkllmd.plugins.builtin._httpbase import Keys, Server, is_loopback, load_keys, valid_keys
from rkllmd.plugins.builtin.http.relay import Relay

from .api import Api
from .wire import error_body


class Config(PluginConfig):
    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 or :: for every interface")
    port: int = Field(11434, ge=1, le=65535)
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


def setup(ctx: PluginContext, config: Config) -> None:
    """Main thread: check the config against the models, bind the port, start serving."""
    for alias, target in config.aliases.items():
        if target not in ctx.settings.models:
            raise ValueError(f"aliases.{alias}: {target!r} is not a configured model")
    keys = load_keys(config.api_keys, config.api_key_file)
    relay = Relay()
    api = Api(
        ctx,
        relay,
        keys=Keys(keys),
        aliases=dict(config.aliases),
        max_body_bytes=config.max_body_bytes or ctx.settings.limits.max_payload_bytes,
        retry_after_s=config.retry_after_s,
    )
    try:
        server = Server(
            config.host,
            config.port,
            api.handle,
            log=ctx.log,
            error_body=error_body,
            max_connections=config.max_connections,
            timeout_s=config.read_timeout_s,
            thread_name="ollama-handler",
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # often an old process (or Ollama itself) on the port
            raise NotReady(f"{config.host}:{config.port} is in use") from exc
        raise
    # The router before the first request can be injected: no event may find no queue.
    ctx.add_router(relay.route)
    # The poll interval bounds how long teardown waits for the accept loop to notice it should end.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="ollama-server", daemon=True)
    thread.start()

    def stop() -> None:  # main thread, at teardown
        relay.close()  # handlers still waiting are answered 503 shutdown
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    ctx.on_teardown(stop)
    host, port = config.host, server.server_address[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    ctx.log.info("Ollama-compatible API listening", url=url, auth=bool(keys))
    if not keys and not is_loopback(config.host):
        ctx.log.warning("the Ollama API listens beyond loopback without API keys", host=config.host)


PLUGIN = Plugin(
    name="ollama",
    version="1.0.0",
    description="Ollama-compatible HTTP API (chat, generate, tags, ps, show) for Home Assistant and others",
    config=Config,
    setup=setup,
)
