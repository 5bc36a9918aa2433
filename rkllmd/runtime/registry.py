"""Every kind of runtime rkllmd knows, and building a model's runtime from its settings.

Each runtime package declares one :class:`RuntimeKind` (``KIND``); ``runtime = "<name>"`` in a
``[models.X]`` table picks it. Importing this module imports those packages' faces only: the
runtimes themselves, ``llama_cpp``, ``tokenizers`` and librkllmrt.so are loaded when a model
needs them.

A new runtime is a package beside ``rkllm`` and ``llamacpp``: ``settings.py`` (its table, a
:class:`~rkllmd.config_base.ModelCommon` with ``runtime: Literal["<name>"]``), ``runtime.py`` (its
:class:`~rkllmd.runtime.base.Runtime`), ``__init__.py`` with its ``open_runtime`` (no pydantic
imported: the worker process imports it) and ``kind.py`` declaring ``KIND``; then its ``KIND``
goes in ``_KINDS`` below and its table in ``rkllmd.settings.ModelSettings``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from rkllmd.config_base import ModelCommon
from rkllmd.runtime.base import Runtime, RuntimeKind, TokenCounter
from rkllmd.runtime.llamacpp.kind import KIND as LLAMACPP
from rkllmd.runtime.models import ModelRegistry
from rkllmd.runtime.rkllm.kind import KIND as RKLLM
from rkllmd.runtime.worker import WorkerRuntime

if TYPE_CHECKING:
    from rkllmd.settings import Settings

__all__ = [
    "RuntimeKind",
    "build_registry",
    "check_model",
    "kind_of",
    "kinds",
    "make_runtime",
    "token_counter",
]

_KINDS: Mapping[str, RuntimeKind] = MappingProxyType({k.name: k for k in (RKLLM, LLAMACPP)})


def kinds() -> Mapping[str, RuntimeKind]:
    """Every runtime kind by the name a ``[models.X]`` table gives as its ``runtime``."""
    return _KINDS


def kind_of(cfg: ModelCommon) -> RuntimeKind:
    """The kind of runtime the model ``cfg`` runs on."""
    return _KINDS[cfg.runtime]


def make_runtime(name: str, cfg: ModelCommon, settings: Settings, *, isolate: bool = True) -> Runtime:
    """A closed runtime for model ``name``; open() loads it (on the inference thread).

    With ``isolation = "process"`` (the default) the real runtime runs in a worker process.
    """
    kind = kind_of(cfg)
    if isolate and settings.isolation == "process":
        return WorkerRuntime(kind, name, cfg, settings)
    return kind.open_runtime(name, cfg, settings)


def build_registry(settings: Settings) -> ModelRegistry:
    """The configured models, each with how to build its runtime."""
    factories: dict[str, Callable[[], Runtime]] = {
        name: functools.partial(make_runtime, name, cfg, settings) for name, cfg in settings.models.items()
    }
    return ModelRegistry(factories)


def check_model(name: str, cfg: ModelCommon) -> list[str]:
    """Problems that would stop ``name`` from loading, found without loading it."""
    return kind_of(cfg).check(name, cfg)


def token_counter(cfg: ModelCommon) -> TokenCounter | None:
    """A counter of tokens in the model's own tokenizer (any thread), or None when it has none.

    The counter loads its tokenizer on the first count; the same file gives the same counter.
    """
    return kind_of(cfg).token_counter(cfg)
