"""The plugin contract (plugin API 1): the events hooks receive and what the daemon lends plugins.

``Plugin``, what a plugin module declares, is beside the context its ``setup`` gets
(rkllmd/plugins/context.py).

Data and types only, no threads. docs/PLUGINS.md is the guide for plugin authors; the names here
are re-exported by ``rkllmd.plugins``, which is what plugins import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from rkllmd.errors import RkllmdError

# Exchange, Token, Final and LocalMessage are the daemon's own types, re-exported for plugins.
from rkllmd.exchange import Exchange as Exchange
from rkllmd.exchange import Final as Final
from rkllmd.exchange import Token as Token
from rkllmd.protocol import Incoming, Topics
from rkllmd.protocol import LocalMessage as LocalMessage

if TYPE_CHECKING:
    from rkllmd.settings import Settings

#: The plugin API this rkllmd implements; a plugin declares the one it was written for.
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})

#: An MQTT message as plugins see it (topic, payload bytes, v5 response topic, correlation data).
Message = Incoming


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NotReady(Exception):
    """Raised by ``setup`` when a dependency is not there yet: setup is retried with backoff."""


class PluginError(RkllmdError):
    """A plugin failed while handling a request; the reply names the plugin."""

    code = "plugin_error"


Preprocessor = Callable[[Exchange], Exchange]
Router = Callable[[Token | Final], None]
Handler = Callable[[Message], None]
StatsContributor = Callable[[], dict[str, Any] | None]


class Services(Protocol):
    """What the daemon lends to plugins; the testing kit has its own implementation."""

    settings: Settings
    topics: Topics

    def publish(self, topic: str, payload: bytes, *, qos: int | None, retain: bool) -> None: ...

    def subscribe(self, topic: str, qos: int | None) -> Callable[[], None]: ...

    def stats(self) -> dict[str, Any]: ...

    def refresh_stats(self) -> None: ...

    def cancel(self, request_id: str) -> str: ...

    def inject(self, msg: Message) -> None: ...

    def count_tokens(self, model: str, text: str) -> int | None: ...
