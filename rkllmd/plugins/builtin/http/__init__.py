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
arrival order; a full queue is 503 with Retry-After. Served by aiohttp (_httpserver), imported
only once the plugin is enabled.

Threads: setup/teardown on the main thread; ``http-server`` runs the event loop that accepts,
parses and answers every connection; the router (_relay.Relay.route) on rkllmd's inference
(tokens) and dispatcher (finals) threads.
"""

from __future__ import annotations

from pydantic import Field

from rkllmd.plugins import Plugin, PluginContext
from rkllmd.plugins.builtin._httpbase import start
from rkllmd.plugins.builtin._httpconfig import HttpConfig

from .api import Api
from .wire import OpenAIErrors, error_body


class Config(HttpConfig):
    port: int = Field(8088, ge=1, le=65535)


def setup(ctx: PluginContext, config: Config) -> None:
    """Main thread: check the config against the models, bind the port, start serving."""
    start(ctx, config, Api, name="http", api_name="OpenAI", url_path="/v1", error_body=error_body,
          errors=OpenAIErrors())  # fmt: skip


PLUGIN = Plugin(
    name="http",
    version="1.0.0",
    description="OpenAI-compatible HTTP API (chat/completions, completions, models, health)",
    config=Config,
    setup=setup,
)
