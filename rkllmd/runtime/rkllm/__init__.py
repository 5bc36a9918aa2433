"""The RKLLM runtime (Rockchip NPU) bound with ctypes.

``kind.KIND`` is what rkllmd.runtime.registry knows of it: the tables' models (``settings.py``),
the runtime (``runtime.py``), the check and the token counter (``counter.py``). This module
imports nothing else, pydantic least of all: the worker process imports it to call
:func:`open_runtime`. ``rkllmd.runtime.rkllm.runtime.RkllmRuntime`` is imported when a model is
built, and finds and loads librkllmrt.so only when the model is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkllmd.runtime.base import Runtime
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings

__all__ = ["open_runtime"]


def open_runtime(name: str, cfg: RkllmModelSettings, settings: Any) -> Runtime:
    """The runtime of model ``name``; of the whole configuration it takes the ``[rkllm]`` table.

    ``cfg`` and ``settings.rkllm`` are the pydantic models, or in a worker process
    :class:`~rkllmd.runtime.base.Table` s of the same names.
    """
    from rkllmd.runtime.rkllm.runtime import RkllmRuntime

    rk: RkllmSettings = settings.rkllm
    return RkllmRuntime(name, cfg, rk)
