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
and OpenAI-API requests, in arrival order. Served by aiohttp (_httpserver), imported
only once the plugin is enabled.

Threads: setup/teardown on the main thread; ``ollama-server`` runs the event loop that accepts,
parses and answers every connection; the router (_relay.Relay.route) on rkllmd's inference
(tokens) and dispatcher (finals) threads.
"""

from __future__ import annotations

from rkllmd.plugins import Plugin, PluginContext
from rkllmd.plugins.builtin._httpbase import start

from .api import Api
from .config import Config
from .wire import error_body


def setup(ctx: PluginContext, config: Config) -> None:
    """Main thread: check the config against the models, bind the port, start serving."""
    # A port in use is often an old process, or Ollama itself: NotReady, retried.
    start(ctx, config, Api, name="ollama", api_name="Ollama", error_body=error_body)


PLUGIN = Plugin(
    name="ollama",
    version="1.0.0",
    description="Ollama-compatible HTTP API (chat, generate, tags, ps, show) for Home Assistant and others",
    config=Config,
    setup=setup,
)
