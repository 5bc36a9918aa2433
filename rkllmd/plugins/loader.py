"""Finding plugins by name, importing them, and checking them and their config tables.

A plugin is found, in this order, among the plugins shipped in ``rkllmd.plugins.builtin``, in a
plugin folder (``[plugins] folders``, and the ``plugins/`` folder of a source checkout, where
``example.py`` lives), or through an entry point in the ``rkllmd.plugins`` group of any installed
distribution. Nothing here is imported before a plugin is asked for by name.

Threads: main thread (config validation, daemon start); the testing kit calls it from tests.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rkllmd.plugins.context import Plugin
from rkllmd.plugins.contract import API_VERSION, SUPPORTED_API_VERSIONS

BUILTIN = "rkllmd.plugins.builtin"
ENTRY_POINT_GROUP = "rkllmd.plugins"
# In a source checkout the top-level plugins/ folder is where a user's own plugins go; an
# installed rkllmd has none (site-packages holds no pyproject.toml beside the package).
_CHECKOUT = Path(__file__).resolve().parents[2]


class PluginLoadError(Exception):
    """A plugin could not be found, imported, or does not follow the contract."""


def plugin_folders(configured: Sequence[Path] = ()) -> list[Path]:
    """The folders searched for plugin modules: the configured ones, then the checkout's."""
    out = [Path(f) for f in configured]
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "plugins").is_dir():
        out.append(_CHECKOUT / "plugins")
    return out


def discover(folders: Sequence[Path] = ()) -> dict[str, str]:
    """Every installed plugin name and where it comes from, without importing any."""
    found: dict[str, str] = {}
    spec = importlib.util.find_spec(BUILTIN)
    if spec is not None and spec.submodule_search_locations:
        for mod in pkgutil.iter_modules(list(spec.submodule_search_locations)):
            if not mod.name.startswith("_"):
                found[mod.name] = f"{BUILTIN}.{mod.name}"
    for folder in plugin_folders(folders):
        for mod in pkgutil.iter_modules([str(folder)]):
            if not mod.name.startswith("_"):
                found.setdefault(mod.name, str(folder / mod.name))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"entry point {ep.value}")
    return found


def _folder_package(folder: Path) -> str:
    """A package whose one search path is ``folder``, so its plugins import like any module
    (a plugin package's relative imports included); named after the folder's path."""
    resolved = folder.resolve()
    name = "rkllmd_plugin_folder_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    if name not in sys.modules:
        pkg = types.ModuleType(name, f"rkllmd plugins in {resolved}")
        pkg.__path__ = [str(resolved)]
        sys.modules[name] = pkg
    return name


def _find(name: str, folders: Sequence[Path]) -> str | None:
    """The module to import for plugin ``name`` from the builtin package or a folder, or None."""
    try:
        if importlib.util.find_spec(f"{BUILTIN}.{name}") is not None:
            return f"{BUILTIN}.{name}"
    except (ImportError, ValueError):
        pass
    for folder in plugin_folders(folders):
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return f"{_folder_package(folder)}.{name}"
    return None


_cache: dict[str, Plugin] = {}
_cache_lock = threading.Lock()


# Names the plugin API dropped in favour of one name per concept, and what to import instead.
RENAMED = {"Request": "Exchange"}


def _renamed_hint(exc: Exception) -> str:
    """How to mend a plugin written against a name the API has since renamed, or nothing."""
    if not isinstance(exc, ImportError):
        return ""
    for old, new in RENAMED.items():
        if f"cannot import name '{old}' from 'rkllmd.plugins'" in str(exc):
            return f" (rkllmd.plugins.{old} is now {new}, the same class: import {new} instead)"
    return ""


def load_plugin(name: str, folders: Sequence[Path] = ()) -> Plugin:
    """Import the plugin called ``name`` and check it against the contract."""
    with _cache_lock:
        if name in _cache:
            return _cache[name]
    obj: Any = None
    try:
        module_name = _find(name, folders) if not name.startswith("_") and name.isidentifier() else None
        if module_name is not None:
            obj = importlib.import_module(module_name)
        else:
            eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
            if not eps:
                known = ", ".join(discover(folders))
                raise PluginLoadError(f"no plugin named {name!r} is installed (known: {known})")
            obj = eps[0].load()
    except PluginLoadError:
        raise
    except Exception as exc:
        raise PluginLoadError(
            f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}{_renamed_hint(exc)}"
        ) from exc
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


def check_plugin_settings(
    enabled: Sequence[str], tables: dict[str, Any], folders: Sequence[Path] = ()
) -> list[str]:
    """Problems with the ``[plugins]`` section, one line each, starting with the dotted key.

    rkllmd.settings.load_settings calls this (handed to it by rkllmd.config) while it validates
    the rest of the file, so that every problem is reported at once.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(enabled):
        if name in seen:
            problems.append(f"plugins.enabled.{i}: {name!r} is listed twice")
        seen.add(name)
    for name in dict.fromkeys([*enabled, *tables]):
        where = f"plugins.enabled.{list(enabled).index(name)}" if name in enabled else f"plugins.{name}"
        try:
            plugin = load_plugin(name, folders)
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
