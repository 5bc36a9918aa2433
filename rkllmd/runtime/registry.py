"""Building a model's runtime from its settings, whatever its kind.

The kinds are found by ``rkllmd.runtime.kinds.discover`` (each package under ``rkllmd/runtime/``
with a ``kind.py``); ``runtime = "<name>"`` in a ``[models.X]`` table picks one. Importing this
module imports those packages' faces only: the runtimes themselves, ``llama_cpp``,
``tokenizers`` and librkllmrt.so are loaded when a model needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rkllmd.config_base import ModelCommon
from rkllmd.runtime.base import Runtime, RuntimeKind, TokenCounter
from rkllmd.runtime.kinds import discover
from rkllmd.runtime.models import ModelRegistry
from rkllmd.runtime.worker import WorkerRuntime

if TYPE_CHECKING:
    from rkllmd.runtime.models import RuntimeConfig

__all__ = [
    "RuntimeKind",
    "build_registry",
    "kind_of",
    "kinds",
    "load_problems",
    "make_runtime",
    "token_counter",
]


def kinds() -> Mapping[str, RuntimeKind]:
    """Every runtime kind by the name a ``[models.X]`` table gives as its ``runtime``."""
    return discover()


def kind_of(cfg: ModelCommon) -> RuntimeKind:
    """The kind of runtime the model ``cfg`` runs on."""
    return discover()[cfg.runtime]


def make_runtime(name: str, cfg: ModelCommon, settings: RuntimeConfig, *, isolate: bool = True) -> Runtime:
    """A closed runtime for model ``name``; open() loads it (on the inference thread).

    With ``isolation = "process"`` (the default) the real runtime runs in a worker process.
    """
    kind = kind_of(cfg)
    if isolate and settings.isolation == "process":
        return WorkerRuntime(kind, name, cfg, settings)
    return kind.open_runtime(name, cfg, settings)


def build_registry(settings: RuntimeConfig) -> ModelRegistry:
    """The configured models, each with how to build its runtime."""
    factories: dict[str, Callable[[], Runtime]] = {
        name: functools.partial(make_runtime, name, cfg, settings) for name, cfg in settings.models.items()
    }
    return ModelRegistry(factories)


def load_problems(name: str, cfg: ModelCommon) -> list[str]:
    """Problems that would stop ``name`` from loading, found without loading it."""
    return kind_of(cfg).load_problems(name, cfg)


def token_counter(cfg: ModelCommon) -> TokenCounter | None:
    """A counter of tokens in the model's own tokenizer (any thread), or None when it has none.

    The counter loads its tokenizer on the first count; the same file gives the same counter.
    """
    return kind_of(cfg).token_counter(cfg)
