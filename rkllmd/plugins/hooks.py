"""The hook chains plugins register into, and running them.

Threads: registration from any thread (through rkllmd.plugins.context.PluginContext);
``handles``, ``deliver`` and ``preprocess`` run on the *ingress* thread; ``route`` and ``stats``
on the *dispatcher* thread. A hook that raises never takes its thread down.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog

from rkllmd.errors import RkllmdError
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.plugins.contract import (
    Handler,
    Message,
    PluginError,
    Preprocessor,
    Router,
    Services,
    StatsContributor,
)

log = structlog.get_logger("rkllmd.plugins")


class Hooks:
    """Preprocessors, routers, stats contributors and topic handlers, in registration order."""

    def __init__(self, services: Services, enabled: Sequence[str] = ()) -> None:
        """``enabled``: the enabled plugins' names, in order (what ``ctx.enabled_plugins`` says)."""
        self.services = services
        self.enabled = list(enabled)
        self._lock = threading.RLock()
        self._pre: list[tuple[str, Preprocessor, frozenset[str]]] = []
        # (plugin, router, which tokens it sees: True all, False none (only finals), "local" those
        # of local requests, e.g. the HTTP APIs' own; whether it may run on any thread: direct)
        self._route: list[tuple[str, Router, bool | Literal["local"], bool]] = []
        self._stats: list[tuple[str, StatsContributor]] = []
        self._subs: list[tuple[str, Handler]] = []  # (topic filter, handler)
        self._reserved: list[str] = []  # topic filters no reply may be sent to (PluginContext.reserve)
        self._sub_refs: dict[str, tuple[int, Callable[[], None]]] = {}

    # registration (through PluginContext, any thread)

    def add(self, kind: str, item: Any) -> Callable[[], None]:
        with self._lock:
            chains: dict[str, list[Any]] = {
                "pre": self._pre,
                "route": self._route,
                "stats": self._stats,
                "reserved": self._reserved,
            }
            chain = chains[kind]
            chain.append(item)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                chain.remove(item)

        return remove

    def add_subscription(self, topic: str, handler: Handler, qos: int | None) -> Callable[[], None]:
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

    def reserved(self, topic: str) -> bool:
        """Whether a plugin publishes on ``topic`` on its own, so no reply may go there."""
        with self._lock:
            return any(_matches(f, topic) for f in self._reserved)

    def deliver(self, msg: Message) -> None:
        """Run every plugin handler subscribed to the message's topic; failures are logged."""
        with self._lock:
            handlers = [h for f, h in self._subs if _matches(f, msg.topic)]
        for h in handlers:
            try:
                h(msg)
            except Exception:
                log.exception("plugin topic handler failed", topic=msg.topic)

    def preprocess(self, req: Exchange) -> Exchange:
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
            if not isinstance(out, Exchange):
                got = type(out).__name__
                raise PluginError(f"plugin {name!r}: its preprocessor returned {got}, not the Exchange")
            req = out
        return req

    # dispatcher thread

    @property
    def has_routers(self) -> bool:
        return bool(self._route)

    def routes_tokens(self, request: Exchange, *, direct: bool | None = None) -> bool:
        """Whether some router wants this request's tokens (any thread); ``direct``: only the
        routers that may (True) or may not (False) run on the thread the tokens arrive on."""
        with self._lock:
            return any(
                _sees(tokens, request) and (direct is None or on_any == direct)
                for _, _, tokens, on_any in self._route
            )

    def route(self, event: Token | Final) -> None:
        """Hand ``event`` to every router that takes it (a Token only to those that asked for
        tokens); one that raises is logged and the rest still run."""
        self._route_to(event, direct_only=False)

    def route_direct(self, event: Token) -> None:
        """A token, from the thread it arrived on, to the direct routers that take it (when
        :meth:`routes_tokens` says no other router wants it: rkllmd/dispatch.py)."""
        self._route_to(event, direct_only=True)

    def _route_to(self, event: Token | Final, *, direct_only: bool) -> None:
        with self._lock:
            chain = list(self._route)
        token = isinstance(event, Token)
        for name, fn, tokens, direct in chain:
            if (token and not _sees(tokens, event.request)) or (direct_only and not direct):
                continue
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


def _sees(tokens: bool | Literal["local"], request: Exchange) -> bool:
    return tokens is True or (tokens == "local" and request.local)


def _matches(sub: str, topic: str) -> bool:
    import paho.mqtt.client as mqtt

    return bool(mqtt.topic_matches_sub(sub, topic))
