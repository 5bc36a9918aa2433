"""Plugins: the contract, the loader and the two hook chains.

A plugin is a module (in the ``plugins`` package shipped with rkllmd, or any distribution that
declares an entry point in the ``rkllmd.plugins`` group) holding one :class:`Plugin` named
``PLUGIN``. Only plugins listed in ``[plugins] enabled`` run, in that order; their config tables
are validated with the rest of the configuration (``rkllmd.settings``) before anything starts.

Threads (see rkllmd/daemon.py):
- *ingress*: preprocessors, and the handlers of topics a plugin subscribes to;
- *dispatcher*: routers and stats contributors;
- *main*: setup and teardown; a retry after :class:`NotReady` runs on a timer thread;
- never the inference thread.

docs/PLUGINS.md is the guide for plugin authors; rkllmd.testing is the kit to test one.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from rkllmd.errors import RkllmdError
from rkllmd.protocol import Incoming, Topics, check_publish_topic

if TYPE_CHECKING:
    from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd.plugins")

#: The plugin API this rkllmd implements; a plugin declares the one it was written for.
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})
PACKAGE = "plugins"
ENTRY_POINT_GROUP = "rkllmd.plugins"

#: An MQTT message as plugins see it (topic, payload bytes, v5 response topic, correlation data).
Message = Incoming


@dataclass(frozen=True)
class LocalMessage(Incoming):
    """A request a plugin injects for its own transport (e.g. HTTP): handled like any message on
    its topic, but nothing about it is published over MQTT (no stream chunks, no final reply);
    routers still see its tokens and its final reply. So answers meant for another transport
    neither reach the broker's subscribers nor pile up in the MQTT client while the broker is away.
    """


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NotReady(Exception):
    """Raised by ``setup`` when a dependency is not there yet: setup is retried with backoff."""


class PluginError(RkllmdError):
    """A plugin failed while handling a request; the reply names the plugin."""

    code = "plugin_error"


@dataclass
class Request:
    """One incoming request as preprocessors and routers see it.

    ``payload`` is the decoded JSON object (or ``{"prompt": text}`` for plain text) before
    validation: a preprocessor may read and remove its own fields and write standard ones.
    ``meta`` is scratch space carried from preprocessors to routers (key it by plugin name).
    ``id`` and ``model`` are filled in once the request is accepted.
    """

    command: str
    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    topic_model: str | None = None
    original: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    model: str | None = None
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Token:
    """A streamed text delta of a generate request (router event)."""

    request: Request
    seq: int
    delta: str


@dataclass(frozen=True)
class Final:
    """The one final reply of a request, success or error (router event)."""

    request: Request
    status: Literal["ok", "error"]
    data: dict[str, Any]
    code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def text(self) -> str:
        return str(self.data.get("text") or "")

    def as_reply(self) -> dict[str, Any]:
        """The reply as the requester got it (without transaction echo)."""
        out: dict[str, Any] = {"status": self.status}
        if self.request.id is not None:
            out["id"] = self.request.id
        if self.status == "error":
            out["code"], out["error"] = self.code, self.error
        out["data"] = self.data
        return out


Preprocessor = Callable[[Request], Request]
Router = Callable[[Token | Final], None]
Handler = Callable[[Message], None]
StatsContributor = Callable[[], dict[str, Any] | None]


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


# --- the context handed to setup -------------------------------------------------------------


class PluginContext:
    """A plugin's handle on rkllmd; everything registered through it is undone at teardown."""

    def __init__(self, host: PluginHost, plugin: Plugin) -> None:
        self._host = host
        self.plugin = plugin
        self.name = plugin.name
        self.settings: Settings = host.services.settings
        self.topics: Topics = host.services.topics
        self.log = structlog.get_logger(f"rkllmd.plugin.{plugin.name}").bind(plugin=plugin.name)
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._closed = False

    # topics and publishing (any thread)

    def topic(self, *parts: str) -> str:
        """A topic in this plugin's namespace: ``<base>/plugins/<name>/<parts...>``."""
        return "/".join((self.topics.base, "plugins", self.name, *parts))

    @property
    def enabled_plugins(self) -> list[str]:
        return list(self._host.enabled)

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
        self._host.services.publish(topic, data, qos=qos, retain=retain)

    def subscribe(self, topic: str, handler: Handler, qos: int | None = None) -> Callable[[], None]:
        """Call ``handler(message)`` on the ingress thread for each message matching ``topic``.

        Returns the unsubscribe; teardown unsubscribes whatever is left.
        """
        if topic.startswith(self.topics.request("")):
            raise ValueError(f"{topic!r} is under rkllmd's own request topics")
        remove = self._host._add_subscription(topic, handler, qos)
        return self._keep(remove)

    def add_preprocessor(
        self, fn: Preprocessor, commands: Iterable[str] = ("generate",)
    ) -> Callable[[], None]:
        """Add ``fn`` to the preprocessor chain for requests of ``commands`` (ingress thread)."""
        return self._keep(self._host._add("pre", (self.name, fn, frozenset(commands))))

    def add_router(self, fn: Router) -> Callable[[], None]:
        """Add ``fn`` to the router chain: it sees Token and Final events (dispatcher thread)."""
        return self._keep(self._host._add("route", (self.name, fn)))

    def add_stats(self, fn: StatsContributor) -> Callable[[], None]:
        """Contribute ``fn()`` to the stats topic as ``plugins.<name>``; None leaves it out."""
        return self._keep(self._host._add("stats", (self.name, fn)))

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
        return self._host.services.stats()

    def refresh_stats(self) -> None:
        """Ask the daemon to publish its stats topic now."""
        self._host.services.refresh_stats()

    def cancel(self, request_id: str) -> str:
        """Cancel a queued or running request; returns ``queued``/``running``; NotFound otherwise."""
        return self._host.services.cancel(request_id)

    def inject(self, msg: Message) -> None:
        """Handle ``msg`` as if it had arrived on its topic (e.g. a ``<base>/request/...`` topic);
        a :class:`LocalMessage` is answered to routers only."""
        self._host.services.inject(msg)

    def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens ``text`` takes with ``model``'s tokenizer, or None when it has none (any thread)."""
        return self._host.services.count_tokens(model, text)

    def context_length(self, model: str) -> int:
        return int(self.settings.models[model].max_context_len)

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

    def _close(self) -> None:
        with self._lock:
            undo, self._undo = self._undo, []
            self._closed = True
        for fn in reversed(undo):
            try:
                fn()
            except Exception:
                self.log.exception("plugin cleanup failed")


# --- finding and validating plugins ------------------------------------------------------------


class PluginLoadError(Exception):
    """A plugin could not be found, imported, or does not follow the contract."""


def discover() -> dict[str, str]:
    """Every installed plugin name and where it comes from, without importing any."""
    found: dict[str, str] = {}
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        import pkgutil

        for mod in pkgutil.iter_modules(list(spec.submodule_search_locations)):
            if not mod.name.startswith("_"):
                found[mod.name] = f"{PACKAGE}.{mod.name}"
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"entry point {ep.value}")
    return found


_cache: dict[str, Plugin] = {}
_cache_lock = threading.Lock()


def load_plugin(name: str) -> Plugin:
    """Import the plugin called ``name`` and check it against the contract."""
    with _cache_lock:
        if name in _cache:
            return _cache[name]
    obj: Any = None
    module_name = f"{PACKAGE}.{name}"
    try:
        in_package = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        in_package = False
    try:
        if in_package:
            obj = importlib.import_module(module_name)
        else:
            eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
            if not eps:
                raise PluginLoadError(
                    f"no plugin named {name!r} is installed (known: {', '.join(discover())})"
                )
            obj = eps[0].load()
    except PluginLoadError:
        raise
    except Exception as exc:
        raise PluginLoadError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
    plugin = getattr(obj, "PLUGIN", obj)
    if not isinstance(plugin, Plugin):
        raise PluginLoadError(f"plugin {name!r} declares no PLUGIN = rkllmd.plugins.Plugin(...)")
    if plugin.name != name:
        raise PluginLoadError(f"plugin found as {name!r} calls itself {plugin.name!r}")
    if plugin.api_version not in SUPPORTED_API_VERSIONS:
        raise PluginLoadError(
            f"plugin {name!r} targets plugin API {plugin.api_version}; this rkllmd has API {API_VERSION}"
        )
    if not (isinstance(plugin.config, type) and issubclass(plugin.config, BaseModel)):
        raise PluginLoadError(f"plugin {name!r}: config must be a pydantic model")
    if plugin.config.model_config.get("extra") != "forbid":
        raise PluginLoadError(f"plugin {name!r}: its config model must reject unknown keys (PluginConfig)")
    with _cache_lock:
        _cache[name] = plugin
    return plugin


def check_plugin_settings(enabled: Sequence[str], tables: dict[str, Any]) -> list[str]:
    """Problems with the ``[plugins]`` section, one line each, starting with the dotted key."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(enabled):
        if name in seen:
            problems.append(f"plugins.enabled.{i}: {name!r} is listed twice")
        seen.add(name)
    for name in dict.fromkeys([*enabled, *tables]):
        where = f"plugins.enabled.{list(enabled).index(name)}" if name in enabled else f"plugins.{name}"
        try:
            plugin = load_plugin(name)
        except PluginLoadError as exc:
            problems.append(f"{where}: {exc}")
            continue
        table = tables.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"plugins.{name}: must be a table")
            continue
        try:
            plugin.config.model_validate(table)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"plugins.{name}{'.' + loc if loc else ''}: {msg}")
    return problems


# --- the host: lifecycle and chains -------------------------------------------------------------


@dataclass
class _Slot:
    plugin: Plugin
    config: BaseModel
    state: str = "configured"  # running | not_ready | failed | stopped
    context: PluginContext | None = None
    attempts: int = 0
    timer: threading.Timer | None = None


class PluginHost:
    """Runs the enabled plugins and their chains for the daemon (or the testing kit)."""

    retry_initial_s = 1.0
    retry_max_s = 300.0

    def __init__(
        self,
        services: Services,
        plugins: Sequence[tuple[Plugin, BaseModel]],
        *,
        remove_disabled: bool = True,
    ) -> None:
        """``plugins``: each enabled plugin with its validated config, in order. With
        ``remove_disabled``, installed plugins that are not enabled get their ``remove`` run."""
        self.services = services
        self.enabled = [p.name for p, _ in plugins]
        self._lock = threading.RLock()
        self._pre: list[tuple[str, Preprocessor, frozenset[str]]] = []
        self._route: list[tuple[str, Router]] = []
        self._stats: list[tuple[str, StatsContributor]] = []
        self._subs: list[tuple[str, Handler]] = []  # (topic filter, handler)
        self._sub_refs: dict[str, tuple[int, Callable[[], None]]] = {}
        self._slots: list[_Slot] = []
        self._removers: list[PluginContext] = []
        self._stopping = False
        self._slots = [_Slot(plugin, config) for plugin, config in plugins]
        self._disabled = [n for n in discover() if n not in self.enabled] if remove_disabled else []

    @classmethod
    def from_settings(cls, services: Services) -> PluginHost:
        """The enabled plugins of the (already validated) settings, loaded and configured."""
        p = services.settings.plugins
        tables = p.tables()
        loaded = []
        for name in p.enabled:
            plugin = load_plugin(name)
            loaded.append((plugin, plugin.config.model_validate(tables.get(name, {}))))
        return cls(services, loaded)

    # lifecycle (main thread)

    def start(self) -> None:
        """Set up every enabled plugin in order; then let disabled ones clean up after themselves."""
        for slot in self._slots:
            self._setup(slot)
        for name in self._disabled:
            try:
                plugin = load_plugin(name)
            except PluginLoadError:
                continue
            if plugin.remove is not None:
                self._run_remove(plugin)

    def stop(self) -> None:
        """Tear plugins down in reverse order; their subscriptions and hooks go with them."""
        with self._lock:
            self._stopping = True
        for slot in reversed(self._slots):
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.state == "running":
                self._teardown(slot)
                self._status(slot, "stopped")
        for ctx in reversed(self._removers):
            ctx._close()

    def status(self) -> dict[str, str]:
        return {s.plugin.name: s.state for s in self._slots}

    def _setup(self, slot: _Slot) -> None:
        with self._lock:
            if self._stopping:
                return
        slot.timer = None
        slot.attempts += 1
        ctx = PluginContext(self, slot.plugin)
        slot.context = ctx
        name = slot.plugin.name
        try:
            slot.plugin.setup(ctx, slot.config)
        except NotReady as exc:
            ctx._close()
            delay = min(self.retry_max_s, self.retry_initial_s * 2 ** (slot.attempts - 1))
            log.warning("plugin not ready; will retry", plugin=name, error=str(exc), retry_in_s=delay)
            slot.state = "not_ready"
            self._status(slot, "not_ready", error=str(exc) or "not ready", retry_in_s=delay)
            timer = threading.Timer(delay, self._setup, args=(slot,))
            timer.daemon = True
            timer.name = f"plugin-{name}-retry"
            slot.timer = timer
            timer.start()
            return
        except Exception as exc:
            self._disable(slot, exc, during="setup")
            return
        slot.state = "running"
        log.info("plugin started", plugin=name, version=slot.plugin.version)
        self._status(slot, "running")

    def _teardown(self, slot: _Slot) -> None:
        ctx = slot.context
        if ctx is None:
            return
        if slot.plugin.teardown is not None:
            try:
                slot.plugin.teardown(ctx)
            except Exception:
                log.exception("plugin teardown failed", plugin=slot.plugin.name)
        ctx._close()

    def _disable(self, slot: _Slot, exc: BaseException, during: str) -> None:
        name = slot.plugin.name
        log.error(
            "plugin disabled after a fatal error",
            plugin=name,
            during=during,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        self._teardown(slot)
        slot.state = "failed"
        self._status(slot, "failed", error=f"{type(exc).__name__}: {exc}")
        if slot.plugin.remove is not None:
            self._run_remove(slot.plugin)

    def _run_remove(self, plugin: Plugin) -> None:
        ctx = PluginContext(self, plugin)
        self._removers.append(ctx)
        try:
            assert plugin.remove is not None
            plugin.remove(ctx)
        except Exception:
            log.exception("plugin remove failed", plugin=plugin.name)

    def _status(self, slot: _Slot, state: str, **extra: Any) -> None:
        body = {
            "state": state,
            "version": slot.plugin.version,
            "api_version": slot.plugin.api_version,
            **extra,
        }
        topic = "/".join((self.services.topics.base, "plugins", slot.plugin.name, "status"))
        try:
            self.services.publish(topic, json.dumps(body).encode(), qos=1, retain=True)
        except Exception:
            log.exception("plugin status publish failed", plugin=slot.plugin.name)

    # registration (through PluginContext)

    def _add(self, kind: str, item: Any) -> Callable[[], None]:
        with self._lock:
            chains: dict[str, list[Any]] = {"pre": self._pre, "route": self._route, "stats": self._stats}
            chain = chains[kind]
            chain.append(item)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                chain.remove(item)

        return remove

    def _add_subscription(self, topic: str, handler: Handler, qos: int | None) -> Callable[[], None]:
        item = (topic, handler)
        with self._lock:
            self._subs.append(item)
            if topic in self._sub_refs:
                count, unsub = self._sub_refs[topic]
            else:
                count, unsub = 0, self.services.subscribe(topic, qos)
            self._sub_refs[topic] = (count + 1, unsub)

        def remove() -> None:
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._subs.remove(item)
                n, unsub_ = self._sub_refs.get(topic, (0, _nothing))
                last = n <= 1
                if last:
                    self._sub_refs.pop(topic, None)
                else:
                    self._sub_refs[topic] = (n - 1, unsub_)
            if last:
                unsub_()

        return remove

    # ingress thread

    def handles(self, topic: str) -> bool:
        """Whether a plugin subscribed to ``topic`` (its messages then go to deliver())."""
        with self._lock:
            return any(_matches(f, topic) for f, _ in self._subs)

    def deliver(self, msg: Message) -> None:
        """Run every plugin handler subscribed to the message's topic; failures are logged."""
        with self._lock:
            handlers = [h for f, h in self._subs if _matches(f, msg.topic)]
        for h in handlers:
            try:
                h(msg)
            except Exception:
                log.exception("plugin topic handler failed", topic=msg.topic)

    def preprocess(self, req: Request) -> Request:
        """Run the preprocessor chain; a failure becomes an error reply naming the plugin."""
        with self._lock:
            chain = [(n, fn) for n, fn, cmds in self._pre if req.command in cmds]
        for name, fn in chain:
            try:
                out = fn(req)
            except RkllmdError as exc:
                err = copy.copy(exc)
                err.message = f"plugin {name!r}: {exc.message}"
                err.args = (err.message,)
                raise err from exc
            except Exception as exc:
                log.exception("preprocessor failed", plugin=name, request_id=req.id)
                raise PluginError(
                    f"plugin {name!r} failed: {type(exc).__name__}: {exc}", plugin=name
                ) from exc
            if not isinstance(out, Request):
                got = type(out).__name__
                raise PluginError(f"plugin {name!r}: its preprocessor returned {got}, not the request")
            req = out
        return req

    # dispatcher thread

    @property
    def has_routers(self) -> bool:
        return bool(self._route)

    def route(self, event: Token | Final) -> None:
        """Hand ``event`` to every router; one that raises is logged and the rest still run."""
        with self._lock:
            chain = list(self._route)
        for name, fn in chain:
            try:
                fn(event)
            except Exception:
                log.exception("router failed", plugin=name, request_id=event.request.id)

    def stats(self) -> dict[str, Any]:
        """The ``plugins`` part of the stats topic: contributions, and each plugin's state."""
        with self._lock:
            chain = list(self._stats)
        out: dict[str, Any] = {}
        for name, fn in chain:
            try:
                value = fn()
            except Exception:
                log.exception("stats contributor failed", plugin=name)
                continue
            if value is not None:
                out.setdefault(name, {}).update(value)
        return out


def _nothing() -> None:
    pass


def _matches(sub: str, topic: str) -> bool:
    import paho.mqtt.client as mqtt

    return bool(mqtt.topic_matches_sub(sub, topic))


# --- token counting for plugins ----------------------------------------------------------------


class TokenCounter:
    """Counts tokens with each model's own tokenizer, apart from the loaded runtime.

    The runtime may only be called on the inference thread, so preprocessors (ingress thread)
    get their own tokenizer: the model's ``tokenizer.json`` for RKLLM, the GGUF's vocabulary
    (loaded vocab-only, no weights) for llama.cpp. None when the model has no tokenizer.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fns: dict[str, Callable[[str], int] | None] = {}
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    def count(self, model: str, text: str) -> int | None:
        with self._lock:
            if model not in self._fns:
                try:
                    self._fns[model] = self._build(model)
                except Exception as exc:
                    log.warning("no tokenizer for token counting", model=model, error=str(exc))
                    self._fns[model] = None
            fn = self._fns[model]
            return fn(text) if fn is not None else None

    def _build(self, model: str) -> Callable[[str], int] | None:
        from rkllmd.settings import LlamaCppModelSettings

        cfg = self.settings.models.get(model)
        if cfg is None:
            return None
        if isinstance(cfg, LlamaCppModelSettings):
            from rkllmd.runtime.llamacpp import _import_llama_cpp, _route_native_logs, embedded_model_path

            path = cfg.path or embedded_model_path()
            if path is None:
                return None
            lib = _import_llama_cpp()
            _route_native_logs(lib)
            params = lib.llama_model_default_params()
            params.vocab_only = True
            handle = lib.llama_model_load_from_file(str(path).encode(), params)
            if not handle:
                return None
            vocab = lib.llama_model_get_vocab(handle)
            self._handles.append(handle)  # freed with the process; one per model

            def count_gguf(text: str) -> int:
                data = text.encode("utf-8")
                n = len(data) + 8
                buf = (lib.llama_token * n)()
                r = int(lib.llama_tokenize(vocab, data, len(data), buf, n, False, False))
                if r < 0:
                    buf = (lib.llama_token * -r)()
                    r = int(lib.llama_tokenize(vocab, data, len(data), buf, -r, False, False))
                return r

            return count_gguf
        if cfg.tokenizer is None:
            return None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(cfg.tokenizer))
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


__all__ = [
    "API_VERSION",
    "Final",
    "LocalMessage",
    "Message",
    "NotReady",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "PluginError",
    "PluginHost",
    "Request",
    "Token",
]
