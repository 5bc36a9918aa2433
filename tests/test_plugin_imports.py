"""Plugins reach the core only through the plugin API: ``rkllmd.plugins`` (and ``rkllmd.protocol``,
the MQTT protocol's names), as docs/PLUGINS.md says. A plugin importing ``rkllmd.exchange`` or
``rkllmd.runtime`` directly would break when the core moves; this test names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PLUGIN_FILES = sorted((REPO / "rkllmd" / "plugins" / "builtin").rglob("*.py")) + sorted(
    (REPO / "plugins").glob("*.py")
)
# The plugin API, and the helpers the shipped plugins share among themselves.
ALLOWED = ("rkllmd.plugins", "rkllmd.protocol", "rkllmd.plugins.builtin.")


def allowed(module: str) -> bool:
    return module in ALLOWED[:2] or module.startswith(ALLOWED[2]) or not module.startswith("rkllmd")


def core_imports(path: Path) -> list[str]:
    """Every import of rkllmd outside the plugin API in ``path``, TYPE_CHECKING and function-level too."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names if not allowed(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "rkllmd":  # from rkllmd import protocol / plugins
                names = [a.name for a in node.names if f"rkllmd.{a.name}" not in ALLOWED[:2]]
                bad += [f"{node.lineno}: from rkllmd import {n}" for n in names]
            elif not allowed(node.module):
                bad.append(f"{node.lineno}: from {node.module} import ...")
    return bad


def test_there_are_plugin_files_to_check() -> None:
    names = {p.name for p in PLUGIN_FILES}
    assert {"example.py", "homeassistant.py", "wire.py", "api.py", "_relay.py"} <= names


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_the_core_only_through_the_plugin_api(path: Path) -> None:
    assert core_imports(path) == [], f"{path.relative_to(REPO)} imports the core past rkllmd.plugins"


def test_the_rule_catches_a_core_import(tmp_path: Path) -> None:
    plugin = tmp_path / "p.py"
    plugin.write_text(
        "from typing import TYPE_CHECKING\nfrom rkllmd.plugins import Plugin\nfrom rkllmd import protocol\n"
        "if TYPE_CHECKING:\n    from rkllmd.exchange import Exchange\n"
        "def f():\n    import rkllmd.runtime.registry\n    from rkllmd import errors\n"
    )
    assert core_imports(plugin) == [
        "5: from rkllmd.exchange import ...",
        "7: import rkllmd.runtime.registry",
        "8: from rkllmd import errors",
    ]
