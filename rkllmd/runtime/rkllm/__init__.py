"""The RKLLM runtime (Rockchip NPU) bound with ctypes.

``KIND`` is what rkllmd.runtime.registry knows of it: the tables' models (``settings.py``), the
runtime (``runtime.py``), the check below and the token counter (``counter.py``). Nothing is
loaded here: ``rkllmd.runtime.rkllm.runtime.RkllmRuntime`` is imported when a model is built,
and finds and loads librkllmrt.so only when the model is opened.
"""

from __future__ import annotations

from typing import Any

from rkllmd.runtime.base import Runtime, RuntimeKind
from rkllmd.runtime.rkllm.counter import token_counter
from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings

__all__ = ["KIND", "check", "open_runtime", "token_counter"]


def open_runtime(name: str, cfg: RkllmModelSettings, settings: Any) -> Runtime:
    """The runtime of model ``name``; of the whole configuration it takes the ``[rkllm]`` table."""
    from rkllmd.runtime.rkllm.runtime import RkllmRuntime

    rk: RkllmSettings = settings.rkllm
    return RkllmRuntime(name, cfg, rk)


def check(name: str, cfg: RkllmModelSettings) -> list[str]:
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
    check=check,
    token_counter=token_counter,
    sigill_hint=(
        "SIGILL is an illegal instruction: this librkllmrt.so uses instructions this CPU lacks. "
        "Use a librkllmrt.so release built for this board (some prebuilt releases need SVE, "
        "which the RK3588's cores do not have)"
    ),
)
