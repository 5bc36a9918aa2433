"""The plugin host: sets up the enabled plugins in order, retries, disables, tears down.

Threads: ``start`` and ``stop`` on the main thread; a setup retried after ``NotReady`` on a timer
thread. The chains it inherits from ``Hooks`` say their own threads (rkllmd/plugins/hooks.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from rkllmd.plugins.context import Plugin, PluginContext
from rkllmd.plugins.contract import NotReady, Services
from rkllmd.plugins.hooks import Hooks
from rkllmd.plugins.loader import PluginLoadError, discover, load_plugin

log = structlog.get_logger("rkllmd.plugins")


@dataclass
class _Slot:
    plugin: Plugin
    config: BaseModel
    state: str = "configured"  # running | not_ready | failed | stopped
    context: PluginContext | None = None
    attempts: int = 0
    timer: threading.Timer | None = None


class PluginHost(Hooks):
    """Runs the enabled plugins' lifecycle, and their chains (``Hooks``), for the daemon or the kit."""

    retry_initial_s = 1.0
    retry_max_s = 300.0

    def __init__(
        self,
        services: Services,
        plugins: Sequence[tuple[Plugin, BaseModel]],
        *,
        remove_disabled: bool = True,
        folders: Sequence[Path] = (),
    ) -> None:
        """``plugins``: each enabled plugin with its validated config, in order. With
        ``remove_disabled``, installed plugins that are not enabled get their ``remove`` run."""
        super().__init__(services, [p.name for p, _ in plugins])
        self._removers: list[PluginContext] = []
        self._stopping = False
        self._slots = [_Slot(plugin, config) for plugin, config in plugins]
        self._folders = tuple(folders)
        found = discover(self._folders) if remove_disabled else {}
        self._disabled = [n for n in found if n not in self.enabled]

    @classmethod
    def from_settings(cls, services: Services) -> PluginHost:
        """The enabled plugins of the (already validated) settings, loaded and configured."""
        p = services.settings.plugins
        tables = p.tables()
        loaded = []
        for name in p.enabled:
            plugin = load_plugin(name, p.folders)
            loaded.append((plugin, plugin.config.model_validate(tables.get(name, {}))))
        return cls(services, loaded, folders=p.folders)

    def _context(self, plugin: Plugin) -> PluginContext:
        return PluginContext(self, plugin)

    # lifecycle (main thread)

    def start(self) -> None:
        """Set up every enabled plugin in order; then let disabled ones clean up after themselves."""
        for slot in self._slots:
            self._setup(slot)
        for name in self._disabled:
            try:
                plugin = load_plugin(name, self._folders)
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
            ctx.close()

    def status(self) -> dict[str, str]:
        return {s.plugin.name: s.state for s in self._slots}

    def _setup(self, slot: _Slot) -> None:
        with self._lock:
            if self._stopping:
                return
        slot.timer = None
        slot.attempts += 1
        ctx = self._context(slot.plugin)
        slot.context = ctx
        name = slot.plugin.name
        try:
            slot.plugin.setup(ctx, slot.config)
        except NotReady as exc:
            ctx.close()
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
        ctx.close()

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
        ctx = self._context(plugin)
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
