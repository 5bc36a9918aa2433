"""The configuration as rkllmd runs it: the settings with every plugin table checked.

rkllmd.settings knows nothing of plugins (plugins import it); this module hands it the plugin
loader's check, so one ConfigError lists the core problems and the plugins' together.
"""

from __future__ import annotations

from pathlib import Path

from rkllmd.plugins.loader import check_plugin_settings
from rkllmd.settings import Settings
from rkllmd.settings import load_settings as _load


def load_settings(path: Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read and validate the configuration, plugin tables included; raise ConfigError listing all."""
    return _load(path, env=env, check_plugins=check_plugin_settings)
