"""What rkllmd.runtime.registry knows of the llama.cpp runtime: ``KIND``, with its load_problems below.

The daemon's side only: this module imports the table's pydantic model, which the worker
process does without (it imports the package's ``open_runtime``).
"""

from __future__ import annotations

import importlib.util

from rkllmd.runtime.base import RuntimeKind
from rkllmd.runtime.llamacpp import open_runtime
from rkllmd.runtime.llamacpp._lib import INSTALL_EMBEDDED, INSTALL_EXTRA, embedded_model_path
from rkllmd.runtime.llamacpp.counter import token_counter
from rkllmd.runtime.llamacpp.sampling import HONOURED
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

__all__ = ["KIND", "load_problems"]


def load_problems(name: str, cfg: LlamaCppModelSettings) -> list[str]:
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
    if cfg.mmproj is not None and not cfg.mmproj.is_file():
        problems.append(f"models.{name}.mmproj: {cfg.mmproj} does not exist")
    return problems


KIND = RuntimeKind(
    name="llamacpp",
    settings=LlamaCppModelSettings,
    open_runtime=open_runtime,
    load_problems=load_problems,
    token_counter=token_counter,
    sampling=HONOURED,
    sigill_hint=(
        "SIGILL is an illegal instruction: the llama.cpp build (llama-cpp-python) does not fit "
        "this CPU, e.g. a wheel built on another machine. Rerun scripts/setup.sh, which probes this "
        "CPU and rebuilds llama-cpp-python for it"
    ),
)
