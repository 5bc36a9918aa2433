"""The tool-call formats: one module per model family, each setting ``FORMAT`` to a ToolFormat.

Found by scanning this package (no list to keep up to date): a new family is a new module here
(docs/ARCHITECTURE.md, "Adding a tool-call format"). Modules whose name starts with ``_`` are
helpers, not formats. Importing this package imports no format; the first lookup does.
Pure; any thread (the scan is cached, and importing a module twice is harmless).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from rkllmd.toolcalls.format import ToolFormat

AUTO = "auto"
FALLBACK = "hermes"  # what ``auto`` chooses when no format recognises the model


@cache
def all_formats() -> dict[str, ToolFormat]:
    """Every format in this package by name, in the order ``auto`` asks them (priority, then name)."""
    found: dict[str, ToolFormat] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        fmt = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "FORMAT", None)
        if not isinstance(fmt, ToolFormat):
            raise TypeError(f"{__name__}.{mod.name} sets no FORMAT (a ToolFormat)")
        if fmt.name in found:
            raise TypeError(f"two tool formats are named {fmt.name!r}")
        found[fmt.name] = fmt
    return dict(sorted(found.items(), key=lambda kv: (-kv[1].priority, kv[0])))


def names() -> list[str]:
    """What ``tool_format`` may be set to: ``auto`` and each format's name."""
    return [AUTO, *sorted(all_formats())]


def get(name: str) -> ToolFormat:
    """The format named ``name``; ValueError listing the known ones when there is none."""
    try:
        return all_formats()[name]
    except KeyError:
        raise ValueError(f"unknown tool_format {name!r}; known: {', '.join(names())}") from None


def choose(setting: str, chat_template: str | None, model_name: str) -> ToolFormat:
    """The format of a model: the one ``setting`` names, or for ``auto`` the first whose
    ``detect`` recognises its chat template, else the first that recognises its name (lower-cased
    here), else Hermes. The template goes first: it is what the model was trained to write
    (Hermes-3-Llama-3.1 is named Llama and writes Hermes calls)."""
    if setting != AUTO:
        return get(setting)
    name = model_name.lower()
    asks = ([(chat_template, "")] if chat_template else []) + [(None, name)]
    for template, names_ in asks:
        for fmt in all_formats().values():
            if fmt.detect(template, names_):
                return fmt
    return get(FALLBACK)
