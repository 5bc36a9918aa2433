"""Every kind of runtime rkllmd has, found by looking rather than listed: each package under
``rkllmd/runtime/`` with a ``kind.py`` declaring ``KIND`` (a :class:`RuntimeKind`).

A new runtime is a new package (docs/ARCHITECTURE.md, "Adding a runtime"); nothing here or in
``rkllmd.settings`` (whose ``[models.X]`` tables are the kinds' settings models, and whose
runtime-wide sections such as ``[rkllm]`` the kinds' ``table``) names it.
This module imports the kinds' faces only (their ``kind.py``, which imports its settings model
and its package's ``open_runtime``): the runtimes, ``llama_cpp`` and librkllmrt.so are loaded
when a model needs them. It imports neither ``rkllmd.settings`` nor the registry, which both
build on it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from rkllmd.runtime.base import RuntimeKind

__all__ = ["discover", "find_kinds"]

_HERE = Path(__file__).resolve().parent


@functools.cache
def discover() -> Mapping[str, RuntimeKind]:
    """The runtime kinds by the name a ``[models.X]`` table gives as its ``runtime``, in the order
    of their packages' names (see :func:`find_kinds`)."""
    return find_kinds(_HERE, __package__ or "rkllmd.runtime")


def find_kinds(folder: Path, package: str) -> Mapping[str, RuntimeKind]:
    """The ``KIND`` of every package in ``folder`` (the package ``package``) with a ``kind.py``.

    Raises TypeError for a ``kind.py`` without a RuntimeKind ``KIND`` and ValueError for two kinds
    of one name: a broken runtime package is found when the configuration is first read."""
    found: dict[str, RuntimeKind] = {}
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda i: i.name):
        module_name = f"{package}.{info.name}.kind"
        if not info.ispkg or importlib.util.find_spec(module_name) is None:
            continue
        kind = getattr(importlib.import_module(module_name), "KIND", None)
        if not isinstance(kind, RuntimeKind):
            raise TypeError(f"{module_name} declares no KIND (a rkllmd.runtime.base.RuntimeKind)")
        if kind.name in found:
            raise ValueError(f"two runtime kinds are named {kind.name!r}: {module_name} and another")
        found[kind.name] = kind
    return MappingProxyType(found)
