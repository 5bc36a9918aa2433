"""llama.cpp (llama-cpp-python): any GGUF model on the CPU, and the embedded SmolLM2 demo.

``KIND`` is what rkllmd.runtime.registry knows of it: the table's model (``settings.py``), the
runtime (``runtime.py``, imported when a model is built), the check below and the token counter
(``counter.py``). ``llama_cpp`` itself is imported only when a model is opened or a vocabulary is
loaded for counting, so rkllmd runs without the ``llamacpp`` extra until then.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from rkllmd.runtime.base import Runtime, RuntimeKind
from rkllmd.runtime.llamacpp._lib import INSTALL_EMBEDDED, INSTALL_EXTRA, embedded_model_path
from rkllmd.runtime.llamacpp.counter import token_counter
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

__all__ = ["KIND", "LlamaCppModelSettings", "check", "embedded_model_path", "open_runtime", "token_counter"]


def open_runtime(name: str, cfg: LlamaCppModelSettings, settings: Any) -> Runtime:
    from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime

    return LlamaCppRuntime(name, cfg)


def check(name: str, cfg: LlamaCppModelSettings) -> list[str]:
    """Problems that would stop ``name`` from loading, found without loading it."""
    problems: list[str] = []
    if importlib.util.find_spec("llama_cpp") is None:
        problems.append(f"models.{name}: runtime 'llamacpp' is not installed: {INSTALL_EXTRA}")
    if cfg.path is None:
        if embedded_model_path() is None:
            problems.append(
                f"models.{name}: no path given and the embedded demo model is not installed: "
                f"{INSTALL_EMBEDDED}"
            )
    elif not cfg.path.is_file():
        problems.append(f"models.{name}.path: {cfg.path} does not exist")
    return problems


KIND = RuntimeKind(
    name="llamacpp",
    settings=LlamaCppModelSettings,
    open_runtime=open_runtime,
    check=check,
    token_counter=token_counter,
    sigill_hint=(
        "SIGILL is an illegal instruction: the llama.cpp build (llama-cpp-python) does not fit "
        "this CPU, e.g. a wheel built on another machine. Rerun scripts/setup.sh, which probes this "
        "CPU and rebuilds llama-cpp-python for it"
    ),
)
