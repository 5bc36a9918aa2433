"""What rkllmd.runtime.registry knows of the RKLLM runtime: ``KIND``, with its load_problems below.

The daemon's side only: this module imports the settings' pydantic models, which the worker
process does without (it imports the package's ``open_runtime``).
"""

from __future__ import annotations

from rkllmd.runtime.base import RuntimeKind
from rkllmd.runtime.rkllm import open_runtime
from rkllmd.runtime.rkllm.counter import token_counter
from rkllmd.runtime.rkllm.param import SAMPLING
from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings

__all__ = ["KIND", "load_problems"]


def load_problems(name: str, cfg: RkllmModelSettings) -> list[str]:
    """Problems that would stop ``name`` from loading, found without loading it."""
    problems: list[str] = []
    if not cfg.path.is_file():
        problems.append(f"models.{name}.path: {cfg.path} does not exist")
    if cfg.tokenizer is not None and not cfg.tokenizer.is_file():
        problems.append(f"models.{name}.tokenizer: {cfg.tokenizer} does not exist")
    return problems


KIND = RuntimeKind(
    name="rkllm",
    settings=RkllmModelSettings,
    open_runtime=open_runtime,
    load_problems=load_problems,
    token_counter=token_counter,
    sampling=frozenset(SAMPLING),
    table=RkllmSettings,  # [rkllm]
    sigill_hint=(
        "SIGILL is an illegal instruction: this librkllmrt.so uses instructions this CPU lacks. "
        "Use a librkllmrt.so release built for this board (some prebuilt releases need SVE, "
        "which the RK3588's cores do not have)"
    ),
)
