"""http: an OpenAI-compatible HTTP API on rkllmd's one inference queue (docs/HTTP.md).

    [plugins]
    enabled = ["http"]
    [plugins.http]
    host = "127.0.0.1"          # loopback only unless told otherwise
    port = 8088
    api_key_file = "/etc/rkllmd/http-keys"   # or api_keys = ["..."]; none: no auth

``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true`` as
server-sent events), and ``GET /health``. HTTP requests are injected as rkllmd generate requests,
so they meet the same preprocessors and wait in the same bounded queue as MQTT requests, in
arrival order; a full queue is 503 with Retry-After. Standard library only: no extra to install.

Threads: setup/teardown on the main thread; ``http-server`` accepts; one ``http-handler`` thread
per connection; the router (relay.Relay.route) on rkllmd's dispatcher thread.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import threading
from pathlib import Path

from pydantic import Field, field_validator

from rkllmd.plugins import NotReady, Plugin, PluginConfig, PluginContext

from .api import Api
from .relay import Relay
from .server import Server


class Config(PluginConfig):
    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 or :: for every interface")
    port: int = Field(8088, ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list, repr=False, description="bearer tokens; none: no auth")
    api_key_file: Path | None = Field(None, description="more keys, one per line (# comments)")
    aliases: dict[str, str] = Field(
        default_factory=dict, description='model names clients send -> configured models; "*" = any other'
    )
    max_body_bytes: int | None = Field(None, ge=64, description="default: limits.max_payload_bytes")
    max_connections: int = Field(32, ge=1, le=4096, description="open connections; more are answered 503")
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After of a 503 when the queue is full")
    read_timeout_s: float = Field(30.0, gt=0, description="a client silent this long is disconnected")

    @field_validator("api_keys")
    @classmethod
    def _keys_ok(cls, v: list[str]) -> list[str]:
        if any(not k or k != k.strip() or " " in k for k in v):
            raise ValueError("API keys must be non-empty and contain no spaces")
        return v


def load_keys(config: Config) -> list[str]:
    """The configured keys; a key file that cannot be read or holds no key is an error, so that
    a mistake never leaves the API open."""
    keys = list(config.api_keys)
    if config.api_key_file is not None:
        try:
            lines = config.api_key_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read api_key_file {config.api_key_file}: {exc.strerror}") from exc
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise ValueError(f"api_key_file {config.api_key_file} holds no key")
        keys.extend(found)
    return keys


def setup(ctx: PluginContext, config: Config) -> None:
    """Main thread: check the config against the models, bind the port, start serving."""
    for alias, target in config.aliases.items():
        if target not in ctx.settings.models:
            raise ValueError(f"aliases.{alias}: {target!r} is not a configured model")
    keys = load_keys(config)
    relay = Relay()
    api = Api(
        ctx,
        relay,
        key_digests=[hashlib.sha256(k.encode()).digest() for k in keys],
        aliases=dict(config.aliases),
        max_body_bytes=config.max_body_bytes or ctx.settings.limits.max_payload_bytes,
        retry_after_s=config.retry_after_s,
    )
    try:
        server = Server(
            config.host, config.port, api.handle, ctx.log, config.max_connections, config.read_timeout_s
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # often an old process still closing: retried with backoff
            raise NotReady(f"{config.host}:{config.port} is in use") from exc
        raise
    # The router before the first request can be injected: no event may find no queue.
    ctx.add_router(relay.route)
    # The poll interval bounds how long teardown waits for the accept loop to notice it should end.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="http-server", daemon=True)
    thread.start()

    def stop() -> None:  # main thread, at teardown
        relay.close()  # handlers still waiting are answered 503 shutdown
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    ctx.on_teardown(stop)
    host, port = config.host, server.server_address[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    ctx.log.info("OpenAI-compatible API listening", url=url, auth=bool(keys))
    if not keys and not _loopback(config.host):
        ctx.log.warning("the HTTP API listens beyond loopback without API keys", host=config.host)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


PLUGIN = Plugin(
    name="http",
    version="1.0.0",
    description="OpenAI-compatible HTTP API (chat/completions, completions, models, health)",
    config=Config,
    setup=setup,
)
