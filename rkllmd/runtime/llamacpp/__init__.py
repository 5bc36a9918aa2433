"""llama.cpp (llama-cpp-python): any GGUF model on the CPU, and the embedded SmolLM2 demo.

``kind.KIND`` is what rkllmd.runtime.registry knows of it: the table's model (``settings.py``),
the runtime (``runtime.py``, imported when a model is built), the check and the token counter
(``counter.py``). This module imports no pydantic: the worker process imports it to call
:func:`open_runtime`. ``llama_cpp`` itself is imported only when a model is opened or a
vocabulary is loaded for counting, so rkllmd runs without the ``llamacpp`` extra until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rkllmd.runtime.llamacpp._lib import embedded_model_path

if TYPE_CHECKING:
    from rkllmd.runtime.base import Runtime
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

__all__ = ["embedded_model_path", "open_runtime"]


def open_runtime(name: str, cfg: LlamaCppModelSettings, settings: Any) -> Runtime:
    """The runtime of model ``name`` (``cfg`` the model, or a worker's Table of the same names)."""
    from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime

    return LlamaCppRuntime(name, cfg)
