"""What a plugin declares (``Plugin``) and the context its ``setup`` gets: its handle on rkllmd.

Threads: a context is made and closed on the main thread (setup, teardown; a setup retried after
``NotReady`` runs on a timer thread); its methods may be called from any thread, and each says
on which thread the hooks it registers run. Everything registered through it is undone at
teardown, so a plugin keeps no global state of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel

from rkllmd.plugins.contract import (
    API_VERSION,
    Handler,
    Message,
    PluginConfig,
    Preprocessor,
    Router,
    StatsContributor,
)
from rkllmd.plugins.hooks import Hooks
from rkllmd.protocol import ModelFacts, Topics, check_publish_topic, model_facts

if TYPE_CHECKING:
    from rkllmd.settings import Settings


class PluginContext:
    """A plugin's handle on rkllmd; everything registered through it is undone at teardown."""

    def __init__(self, hooks: Hooks, plugin: Plugin) -> None:
        """``hooks``: the chains this plugin registers into (the daemon's PluginHost)."""
        self.plugin = plugin
        self.name = plugin.name
        self._hooks, self._services = hooks, hooks.services
        self.settings: Settings = hooks.services.settings
        self.topics: Topics = hooks.services.topics
        self.log = structlog.get_logger(f"rkllmd.plugin.{plugin.name}").bind(plugin=plugin.name)
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._closed = False

    # topics and publishing (any thread)

    def topic(self, *parts: str) -> str:
        """A topic in this plugin's namespace: ``<base>/plugins/<name>/<parts...>`` (in a fleet,
        ``<base>/node/<node>/plugins/...``: each board's plugins keep their own topics)."""
        return "/".join((self.topics.own, "plugins", self.name, *parts))

    @property
    def enabled_plugins(self) -> list[str]:
        return list(self._hooks.enabled)

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any] | list[Any],
        *,
        retain: bool = False,
        qos: int | None = None,
    ) -> None:
        """Publish bytes, text, or a JSON-serialisable object (any thread)."""
        check_publish_topic(topic, f"plugin {self.name} topic")
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload
        self._services.publish(topic, data, qos=qos, retain=retain)

    def reserve(self, topic_filter: str) -> Callable[[], None]:
        """Topics this plugin publishes on its own (``#`` and ``+`` allowed): no request's
        ``reply_to`` or Response Topic may name one, or any user could publish there as rkllmd.
        Its own ``<base>/plugins/<name>/`` topics are rkllmd's already."""
        return self._keep(self._hooks.add("reserved", topic_filter))

    def subscribe(self, topic: str, handler: Handler, qos: int | None = None) -> Callable[[], None]:
        """Call ``handler(message)`` on the ingress thread for each message matching ``topic``.

        Returns the unsubscribe; teardown unsubscribes whatever is left.
        """
        if topic.startswith((self.topics.request(""), self.topics.group_request(""))):
            raise ValueError(f"{topic!r} is under rkllmd's own request topics")
        remove = self._hooks.add_subscription(topic, handler, qos)
        return self._keep(remove)

    def add_preprocessor(
        self, fn: Preprocessor, commands: Iterable[str] = ("generate",)
    ) -> Callable[[], None]:
        """Add ``fn`` to the preprocessor chain for requests of ``commands`` (ingress thread)."""
        return self._keep(self._hooks.add("pre", (self.name, fn, frozenset(commands))))

    def add_router(
        self, fn: Router, *, tokens: bool | Literal["local"] = True, direct: bool = False
    ) -> Callable[[], None]:
        """Add ``fn`` to the router chain: it sees Final events and, with ``tokens``, Token events
        (dispatcher thread). ``tokens=False`` for a router that reads only final replies (rkllmd
        can then stream a request's chunks without the dispatcher); ``"local"``: only the tokens
        of local requests (an interface plugin's own). ``direct``: ``fn`` never blocks and may
        run on any thread, so a request's tokens may reach it from the thread they arrive on
        (the inference thread) without waking the dispatcher: one thread wake-up fewer a token."""
        return self._keep(self._hooks.add("route", (self.name, fn, tokens, direct)))

    def add_stats(self, fn: StatsContributor) -> Callable[[], None]:
        """Contribute ``fn()`` to the stats topic as ``plugins.<name>``; None leaves it out."""
        return self._keep(self._hooks.add("stats", (self.name, fn)))

    def on_teardown(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at teardown (after the plugin's own teardown, in reverse order of adding)."""
        self._keep(fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` once after ``delay_s`` on a timer thread; cancelled at teardown."""

        def run() -> None:
            try:
                fn()
            except Exception:
                self.log.exception("plugin timer failed")

        timer = threading.Timer(delay_s, run)
        timer.daemon = True
        timer.name = f"plugin-{self.name}-timer"
        timer.start()
        return self._keep(timer.cancel)

    # the daemon's state and actions

    def stats(self) -> dict[str, Any]:
        """The daemon's current stats (queue depth, busy, running id, loaded model, ...)."""
        return self._services.stats()

    def refresh_stats(self) -> None:
        """Ask the daemon to publish its stats topic now."""
        self._services.refresh_stats()

    def cancel(self, request_id: str) -> str:
        """Cancel a queued or running request; returns ``queued``/``running``; NotFound otherwise."""
        return self._services.cancel(request_id)

    def inject(self, msg: Message) -> None:
        """Handle ``msg`` as if it had arrived on its topic (e.g. a ``<base>/request/...`` topic);
        a :class:`LocalMessage` is answered to routers only."""
        self._services.inject(msg)

    def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens ``text`` takes with ``model``'s tokenizer, or None when it has none (any thread)."""
        return self._services.count_tokens(model, text)

    def context_length(self, model: str) -> int:
        return int(self.settings.models[model].max_context_len)

    def models(self) -> list[ModelFacts]:
        """Every configured model as rkllmd lists it (the models reply, the info topic): name,
        runtime, description, context length, whether it is loaded or the default, its file;
        the one source for a plugin's own list of models (any thread)."""
        loaded = self.stats().get("loaded_model")
        return model_facts(
            self.settings.models, loaded if isinstance(loaded, str) else None, self.settings.default
        )

    # internals

    def _keep(self, undo: Callable[[], None]) -> Callable[[], None]:
        done = threading.Event()

        def once() -> None:
            if not done.is_set():
                done.set()
                undo()

        with self._lock:
            self._undo.append(once)
        return once

    def close(self) -> None:
        """Undo everything registered through this context, newest first (main thread)."""
        with self._lock:
            undo, self._undo = self._undo, []
            self._closed = True
        for fn in reversed(undo):
            try:
                fn()
            except Exception:
                self.log.exception("plugin cleanup failed")


@dataclass(frozen=True)
class Plugin:
    """What a plugin module declares as ``PLUGIN``.

    ``setup(context, config)`` registers hooks through the context; it raises :class:`NotReady`
    to be retried later, anything else to be disabled. ``teardown(context)`` releases what setup
    took besides the hooks (those the context removes itself). ``remove(context)`` runs when the
    plugin is installed but not enabled, or was disabled after a fatal error: it undoes what the
    plugin left on the broker (retained messages) and must be cheap.
    """

    name: str
    version: str
    setup: Callable[[PluginContext, Any], None]
    config: type[BaseModel] = PluginConfig
    api_version: int = API_VERSION
    teardown: Callable[[PluginContext], None] | None = None
    remove: Callable[[PluginContext], None] | None = None
    description: str = ""
