"""The configured models by name and how to build a runtime for each; nothing is loaded here.

rkllmd.runtime.registry builds one from the configuration; the inference loop (its thread
alone) asks it to check a name and to create a runtime, which the loop then opens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from rkllmd.errors import UnknownModel
from rkllmd.runtime.base import Runtime

if TYPE_CHECKING:
    from rkllmd.config_base import ModelCommon


class LogLevel(Protocol):
    @property
    def level(self) -> str: ...


class RuntimeConfig(Protocol):
    """What the runtime layer reads of the whole configuration (rkllmd.settings.Settings is one):
    the models, the isolation, the log level, and each kind's own table by the kind's name (read
    with ``getattr``). A protocol, so that runtime/ never imports the settings above it."""

    @property
    def models(self) -> Mapping[str, ModelCommon]: ...

    @property
    def isolation(self) -> str: ...

    @property
    def log(self) -> LogLevel: ...


class ModelRegistry:
    """Configured models by name and how to build a runtime for each (no loading here)."""

    def __init__(self, factories: dict[str, Callable[[], Runtime]]):
        self._factories = factories

    def names(self) -> list[str]:
        return list(self._factories)

    def create(self, name: str) -> Runtime:
        self.require_model(name)
        return self._factories[name]()

    def require_model(self, name: str) -> None:
        """Raise UnknownModel unless ``name`` is a configured model (inference thread)."""
        if name not in self._factories:
            raise UnknownModel(f"unknown model {name!r}; configured: {', '.join(self._factories)}")
